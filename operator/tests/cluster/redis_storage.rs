//! `spec.redis.storage`: the managed Redis keeps its append-only file on a PersistentVolumeClaim.
//!
//! - Against the real StatefulSet controller and garbage collector (kube-controller-manager):
//!   the claim outlives its ChatCluster by default (`whenDeleted: Retain`); `whenDeleted` may
//!   change while the size may not.
//! - On the real node: history published through chat-node survives the Redis pod being deleted
//!   and recreated, because the append-only file is on the volume (a `local` PersistentVolume
//!   in a directory of the host, bound by the real PersistentVolume controller and mounted by the
//!   real kubelet); with `whenDeleted: Delete` the claim goes with the ChatCluster. With
//!   `replicas: 3` each Redis pod has its claim, and the history survives all of them
//!   restarting at once.

use chat_operator::api::{ChatCluster, Phase};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::*;

fn cluster(name: &str, storage: Value) -> ChatCluster {
    serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": name},
        "spec": {"anonymous": true, "replicas": 1,
                 "redis": {"mode": "managed", "storage": storage}}}))
    .unwrap()
}

fn owned_by_statefulset(claim: &PersistentVolumeClaim, statefulset: &str) -> bool {
    claim
        .owner_references()
        .iter()
        .any(|o| o.kind == "StatefulSet" && o.name == statefulset)
}

async fn retention(client: &Client, ns: &str, statefulset: &str) -> Option<String> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    sets.get_opt(statefulset)
        .await
        .ok()??
        .spec?
        .persistent_volume_claim_retention_policy?
        .when_deleted
}

#[tokio::test]
async fn the_redis_volume_claim_stays_or_goes_with_its_chatcluster_as_when_deleted_says() {
    let cp = control_plane().await;
    cp.with_temp_ns("redis-pvc", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let _operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        clusters
            .create(
                &PostParams::default(),
                &cluster("keep", json!({"size": "1Gi"})),
            )
            .await
            .unwrap();
        let _: PersistentVolumeClaim = wait_for_object(&client, &ns, "data-keep-redis-0").await;
        assert_eq!(
            retention(&client, &ns, "keep-redis").await.as_deref(),
            Some("Retain"),
            "Retain is the default"
        );

        // The size is immutable (the claim template cannot change) ...
        let refused = clusters
            .patch(
                "keep",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"redis": {"storage": {"size": "2Gi"}}}})),
            )
            .await
            .expect_err("a new volume size was accepted");
        assert!(
            refused.to_string().contains("is immutable"),
            "unclear refusal: {refused}"
        );
        // ... while whenDeleted may change, and reaches the StatefulSet both ways.
        for policy in ["Delete", "Retain"] {
            clusters
                .patch(
                    "keep",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"redis": {"storage": {"whenDeleted": policy}}}})),
                )
                .await
                .unwrap();
            wait_for(&format!("keep-redis whenDeleted {policy}"), || async {
                (retention(&client, &ns, "keep-redis").await.as_deref() == Some(policy))
                    .then_some(())
            })
            .await;
        }

        // Deleting the ChatCluster: the garbage collector takes its StatefulSet, the claim stays
        // (that `Delete` deletes it is proven on the real node below: the StatefulSet
        // controller takes ownership of a claim only once its pod runs).
        clusters
            .delete("keep", &DeleteParams::default())
            .await
            .unwrap();
        wait_for_absence::<StatefulSet>(&client, &ns, "keep-redis").await;
        let kept = claims.get("data-keep-redis-0").await.unwrap();
        assert!(
            kept.metadata.deletion_timestamp.is_none(),
            "the retained claim is being deleted"
        );
        assert!(!owned_by_statefulset(&kept, "keep-redis"));
    })
    .await;
}

/// A directory of the host for a `local` volume, owned by the Redis user (the kubelet
/// bind-mounts a `local` volume as it is; fsGroup does not apply to it). Under /var/tmp, kept
/// until dropped (after the pod that mounted it is gone).
fn redis_volume_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap();
    let redis_user = chat_operator::children::redis::REDIS_USER as u32;
    std::os::unix::fs::chown(dir.path(), Some(redis_user), Some(redis_user)).unwrap();
    dir
}

/// The test's own StorageClass `name` for static `local` volumes (no provisioner; a claim binds
/// once its pod is scheduled).
async fn create_local_class(classes: &Api<StorageClass>, name: &str) {
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": name},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain"}))
    .unwrap();
    classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
}

/// A 1Gi `local` PersistentVolume `name` of `class` at `path` on the node.
async fn create_local_volume(volumes: &Api<PersistentVolume>, name: &str, class: &str, path: &str) {
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class,
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In",
                "values": [test_harness::node::NODE_NAME]}]}]}}}}))
    .unwrap();
    volumes
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
}

/// Messages each persistence test publishes.
const MESSAGES: usize = 20;

/// Publishes [`MESSAGES`] messages to `chat:lobby` through the server API.
async fn publish_messages(api: &ServerApi) {
    for i in 0..MESSAGES {
        api.call(
            "publish",
            json!({"channel": "chat:lobby", "data": {"n": i}}),
        )
        .await
        .unwrap_or_else(|| panic!("publish {i} refused"));
    }
}

/// The (epoch, offsets) of `chat:lobby` once it holds [`MESSAGES`] messages.
async fn lobby_history(api: &ServerApi, what: &str) -> (Value, Vec<String>) {
    wait_for(what, || async {
        api.history("chat:lobby")
            .await
            .filter(|(_, offsets)| offsets.len() == MESSAGES)
    })
    .await
}

/// The pod IP of the first pod matching `selector`, once it is Ready, and its uid.
async fn ready_pod(
    client: &Client,
    ns: &str,
    selector: &str,
    not_uid: Option<&str>,
) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("a Ready pod {selector}"), || async {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        list.items.into_iter().find_map(|pod| {
            let uid = pod.uid()?;
            if Some(uid.as_str()) == not_uid || pod.metadata.deletion_timestamp.is_some() {
                return None;
            }
            let status = pod.status?;
            let ready = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some((status.pod_ip?, uid))
        })
    })
    .await
}

#[tokio::test]
async fn history_survives_the_redis_pod_on_its_volume() {
    let cp = node_control_plane().await;
    let dir = redis_volume_dir("chatcluster-redis-volume-");
    let path = dir.path().to_str().unwrap().to_owned();
    let aof_dir = dir.path().join("appendonlydir");

    cp.with_temp_ns("redis-aof", |client, ns| async move {
        let class_name = format!("local-{ns}");
        let classes: Api<StorageClass> = Api::all(client.clone());
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        create_local_class(&classes, &class_name).await;
        create_local_volume(&volumes, &class_name, &class_name, &path).await;

        grant_operator_rbac(&client, &ns).await;
        let _operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        clusters
            .create(
                &PostParams::default(),
                &cluster(
                    "durable",
                    json!({"size": "1Gi", "storageClassName": class_name, "whenDeleted": "Delete"}),
                ),
            )
            .await
            .unwrap();
        wait_for("durable Ready", || async {
            (clusters.get("durable").await.ok()?.status?.phase == Some(Phase::Ready)).then_some(())
        })
        .await;

        let (node_ip, _) = ready_pod(
            &client,
            &ns,
            "app.kubernetes.io/name=chat-node,app.kubernetes.io/instance=durable",
            None,
        )
        .await;
        let api = ServerApi::of(&client, &ns, "durable", &node_ip).await;
        publish_messages(&api).await;
        let (epoch, offsets) = lobby_history(&api, "the 20 messages in history").await;

        // The append-only file is on the volume: in the host directory, not in the pod.
        assert!(
            dir_has_files(&aof_dir),
            "no append-only file in the volume's directory"
        );

        // Redis' pod is deleted; the StatefulSet makes a new one on the same claim.
        let (_, redis_uid) = ready_pod(
            &client,
            &ns,
            "app.kubernetes.io/name=redis,app.kubernetes.io/instance=durable",
            None,
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.delete("durable-redis-0", &DeleteParams::default())
            .await
            .unwrap();
        ready_pod(
            &client,
            &ns,
            "app.kubernetes.io/name=redis,app.kubernetes.io/instance=durable",
            Some(&redis_uid),
        )
        .await;
        let (epoch_after, offsets_after) =
            lobby_history(&api, "the 20 messages in history after Redis' restart").await;
        assert_eq!(
            epoch_after, epoch,
            "the history is another one (a new epoch)"
        );
        assert_eq!(offsets_after, offsets);

        // Deleting the ChatCluster deletes the claim (whenDeleted: Delete: the StatefulSet
        // controller made the StatefulSet its owner), which frees the volume (Released: it was
        // bound and is no more).
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        wait_for("the claim owned by its StatefulSet", || async {
            let claim = claims.get_opt("data-durable-redis-0").await.ok()??;
            owned_by_statefulset(&claim, "durable-redis").then_some(())
        })
        .await;
        clusters
            .delete("durable", &DeleteParams::default())
            .await
            .unwrap();
        wait_for_absence::<PersistentVolumeClaim>(&client, &ns, "data-durable-redis-0").await;
        wait_for("the volume released", || async {
            let pv = volumes.get(&class_name).await.ok()?;
            (pv.status?.phase.as_deref() == Some("Released")).then_some(())
        })
        .await;
        volumes
            .delete(&class_name, &DeleteParams::default())
            .await
            .unwrap();
        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .unwrap();
    })
    .await;
    // Kept until here: the kubelet unmounted the volume when the pod went.
    drop(dir);
}

fn dir_has_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| entries.count() > 0)
        .unwrap_or(false)
}

/// Highly available Redis with storage: each of the three pods gets its own claim (bound to a
/// `local` volume), and a restart of every Redis pod at once (what HA alone would not survive:
/// nothing keeps the data in memory anywhere) keeps the history, same epoch and offsets.
#[tokio::test]
async fn ha_redis_on_volumes_keeps_history_when_every_redis_pod_restarts() {
    let cp = node_control_plane().await;
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| redis_volume_dir("chatcluster-redis-ha-volume-"))
        .collect();
    let paths: Vec<String> = dirs
        .iter()
        .map(|d| d.path().to_str().unwrap().to_owned())
        .collect();

    cp.with_temp_ns("redis-ha-aof", |client, ns| async move {
        let class_name = format!("local-{ns}");
        let classes: Api<StorageClass> = Api::all(client.clone());
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        create_local_class(&classes, &class_name).await;
        for (i, path) in paths.iter().enumerate() {
            create_local_volume(&volumes, &format!("{class_name}-{i}"), &class_name, path).await;
        }

        grant_operator_rbac(&client, &ns).await;
        let _operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "sturdy"},
            "spec": {"anonymous": true, "replicas": 1,
                     "redis": {"replicas": 3, "storage": {
                         "size": "1Gi", "storageClassName": class_name, "whenDeleted": "Delete"}}}}))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();
        wait_for("sturdy Ready", || async {
            (clusters.get("sturdy").await.ok()?.status?.phase == Some(Phase::Ready)).then_some(())
        })
        .await;
        let redis_pods = "app.kubernetes.io/name=redis,app.kubernetes.io/instance=sturdy";
        wait_for("3 Redis pods ready", || async {
            (ready_pods(&client, &ns, redis_pods).await.len() == 3).then_some(())
        })
        .await;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        for i in 0..3 {
            let claim = claims.get(&format!("data-sturdy-redis-{i}")).await.unwrap();
            assert_eq!(
                claim.status.and_then(|s| s.phase).as_deref(),
                Some("Bound"),
                "claim {i}"
            );
        }

        let (node_ip, _) = ready_pod(
            &client,
            &ns,
            "app.kubernetes.io/name=chat-node,app.kubernetes.io/instance=sturdy",
            None,
        )
        .await;
        let api = ServerApi::of(&client, &ns, "sturdy", &node_ip).await;
        publish_messages(&api).await;
        let (epoch, offsets) = lobby_history(&api, "the 20 messages in history").await;

        // Every Redis pod at once.
        let before: Vec<String> = ready_pods(&client, &ns, redis_pods)
            .await
            .into_iter()
            .map(|(_, _, uid)| uid)
            .collect();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(redis_pods),
        )
        .await
        .unwrap();
        wait_for("3 new Redis pods ready", || async {
            let now = ready_pods(&client, &ns, redis_pods).await;
            (now.len() == 3 && now.iter().all(|(_, _, uid)| !before.contains(uid))).then_some(())
        })
        .await;
        let (epoch_after, offsets_after) =
            lobby_history(&api, "the 20 messages in history after every Redis pod restarted").await;
        assert_eq!(epoch_after, epoch, "the history is another one (a new epoch)");
        assert_eq!(offsets_after, offsets);

        clusters
            .delete("sturdy", &DeleteParams::default())
            .await
            .unwrap();
        for i in 0..3 {
            wait_for_absence::<PersistentVolumeClaim>(&client, &ns, &format!("data-sturdy-redis-{i}"))
                .await;
        }
        for i in 0..3 {
            let name = format!("{class_name}-{i}");
            wait_for("the volume released", || async {
                let pv = volumes.get(&name).await.ok()?;
                (pv.status?.phase.as_deref() == Some("Released")).then_some(())
            })
            .await;
            volumes.delete(&name, &DeleteParams::default()).await.unwrap();
        }
        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .unwrap();
    })
    .await;
    drop(dirs);
}
