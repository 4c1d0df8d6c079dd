//! `spec.redis.storage`: the managed Redis keeps its append-only file on a PersistentVolumeClaim.
//!
//! - Against the real StatefulSet controller and garbage collector (kube-controller-manager):
//!   the claim outlives its ChatCluster by default (`whenDeleted: Retain`); `whenDeleted` may
//!   change while the size may not.
//! - Without `spec.redis.storage`, the operator's default: a volume on the cluster's default
//!   StorageClass, or an emptyDir and a Warning; `ephemeral: true` opts out.
//! - On the real node: history published through chat-node survives the Redis pod being deleted
//!   and recreated, because the append-only file is on the volume (a `local` PersistentVolume
//!   in a directory of the host, bound by the real PersistentVolume controller and mounted by the
//!   real kubelet) that the operator gave it by default; the claim outlives the ChatCluster.
//!   With `replicas: 3` and `whenDeleted: Delete` each Redis pod has its claim, the history
//!   survives all of them restarting at once, and the claims go with the ChatCluster.

use chat_operator::api::{ChatCluster, Phase};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
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

/// The Redis StatefulSet's volume claim template, as (size, StorageClass); `None`: an emptyDir.
async fn claim_template(client: &Client, ns: &str, statefulset: &str) -> Option<(String, String)> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let spec = sets.get(statefulset).await.unwrap().spec.unwrap();
    let args = spec.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default();
    let append_only = args
        .windows(2)
        .find(|w| w[0] == "--appendonly")
        .map(|w| w[1].clone());
    let claim = spec
        .volume_claim_templates
        .and_then(|t| t.into_iter().next());
    assert_eq!(
        append_only.as_deref(),
        Some(if claim.is_some() { "yes" } else { "no" }),
        "append-only file on a volume only"
    );
    let claim = claim?.spec?;
    Some((
        claim.resources?.requests?.get("storage")?.0.clone(),
        claim.storage_class_name?,
    ))
}

/// The message of `cluster`'s `RedisReady` condition, once it says `wanted`.
async fn redis_ready_message(clusters: &Api<ChatCluster>, cluster: &str, wanted: &str) -> String {
    wait_for(
        &format!("{cluster}'s RedisReady saying {wanted:?}"),
        || async {
            let status = clusters.get(cluster).await.ok()?.status?;
            let message = status.condition("RedisReady")?.message.clone();
            message.contains(wanted).then_some(message)
        },
    )
    .await
}

/// The Warning Events `RedisDataEphemeral` about `cluster`.
async fn ephemeral_warnings(client: &Client, ns: &str, cluster: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("RedisDataEphemeral")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(cluster)
        })
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// Without `spec.redis.storage` the operator decides, once, when it creates the Redis: a 1Gi
/// volume on the cluster's default StorageClass, or an emptyDir and a Warning when there is
/// none; an existing Redis keeps what it has when a default StorageClass appears;
/// `ephemeral: true` opts out. Against the real API server (its default-class admission) and
/// StatefulSet controller, with the operator allowed to list StorageClasses as the chart's
/// ClusterRole allows it.
#[tokio::test]
async fn a_redis_without_storage_gets_a_volume_on_the_default_class_or_an_empty_dir_and_a_warning()
{
    let cp = control_plane().await;
    cp.with_temp_ns("redis-default-pvc", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        // StorageClasses are cluster-scoped: listing them takes a ClusterRoleBinding.
        let binding = format!("chat-operator-storageclasses-{ns}");
        kubectl_stdin(
            cp,
            &["apply", "-f", "-"],
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                "name": "chat-operator"},
                    "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA,
                                  "namespace": ns}]})
            .to_string(),
        );
        let classes: Api<StorageClass> = Api::all(client.clone());
        let defaults: Vec<String> = classes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| {
                c.annotations()
                    .contains_key("storageclass.kubernetes.io/is-default-class")
            })
            .map(|c| c.name_any())
            .collect();
        assert!(
            defaults.is_empty(),
            "the shared control plane has a default StorageClass: {defaults:?}"
        );
        let operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);

        // No default StorageClass: an emptyDir, said in a Warning and in RedisReady.
        clusters
            .create(&PostParams::default(), &cluster("plain", Value::Null))
            .await
            .unwrap();
        let _: StatefulSet = wait_for_object(&client, &ns, "plain-redis").await;
        assert_eq!(claim_template(&client, &ns, "plain-redis").await, None);
        let warning = wait_for("a Warning RedisDataEphemeral about plain", || async {
            ephemeral_warnings(&client, &ns, "plain")
                .await
                .into_iter()
                .next()
        })
        .await;
        assert!(
            warning.contains("no default StorageClass") && warning.contains("spec.redis.storage"),
            "{warning}"
        );
        redis_ready_message(
            &clusters,
            "plain",
            "emptyDir, lost when a Redis pod is deleted",
        )
        .await;

        // A default StorageClass appears: a new Redis gets a 1Gi volume of it ...
        let class_name = format!("default-{ns}");
        classes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                    "metadata": {"name": class_name, "annotations": {
                        "storageclass.kubernetes.io/is-default-class": "true"}},
                    "provisioner": "kubernetes.io/no-provisioner",
                    "volumeBindingMode": "WaitForFirstConsumer"}))
                .unwrap(),
            )
            .await
            .unwrap();
        clusters
            .create(&PostParams::default(), &cluster("durable", Value::Null))
            .await
            .unwrap();
        let claim: PersistentVolumeClaim =
            wait_for_object(&client, &ns, "data-durable-redis-0").await;
        let claim_spec = claim.spec.unwrap();
        assert_eq!(
            claim_spec.storage_class_name.as_deref(),
            Some(class_name.as_str())
        );
        assert_eq!(
            claim_spec.resources.unwrap().requests.unwrap()["storage"].0,
            "1Gi"
        );
        assert_eq!(
            claim_template(&client, &ns, "durable-redis").await,
            Some(("1Gi".to_owned(), class_name.clone()))
        );
        let message = redis_ready_message(&clusters, "durable", "1Gi volume per pod").await;
        assert!(
            message.contains(&format!("StorageClass {class_name}")),
            "{message}"
        );
        // ... `ephemeral: true` keeps an emptyDir, without a Warning ...
        let mut cache = cluster("cache", Value::Null);
        cache.spec.redis.as_mut().unwrap().ephemeral = Some(true);
        clusters
            .create(&PostParams::default(), &cache)
            .await
            .unwrap();
        let _: StatefulSet = wait_for_object(&client, &ns, "cache-redis").await;
        assert_eq!(claim_template(&client, &ns, "cache-redis").await, None);
        // ... and the Redis made without a volume keeps its emptyDir, reconciled without error.
        operator.wait_for_more_runs(6).await;
        assert_eq!(claim_template(&client, &ns, "plain-redis").await, None);
        for name in ["plain", "durable", "cache"] {
            let status = clusters.get(name).await.unwrap().status.unwrap();
            let degraded = status.condition("Degraded").unwrap();
            assert_eq!(degraded.status, "False", "{name}: {}", degraded.message);
        }
        assert!(ephemeral_warnings(&client, &ns, "cache").await.is_empty());
        assert!(ephemeral_warnings(&client, &ns, "durable").await.is_empty());

        // ephemeral contradicts storage, and is immutable.
        let mut both = cluster("both", json!({"size": "1Gi"}));
        both.spec.redis.as_mut().unwrap().ephemeral = Some(true);
        let refused = clusters
            .create(&PostParams::default(), &both)
            .await
            .expect_err("storage with ephemeral: true was accepted");
        assert!(
            refused.to_string().contains("contradict each other"),
            "{refused}"
        );
        let refused = clusters
            .patch(
                "cache",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"redis": {"ephemeral": null}}})),
            )
            .await
            .expect_err("ephemeral was removed");
        assert!(
            refused
                .to_string()
                .contains("spec.redis.ephemeral is immutable"),
            "{refused}"
        );

        classes
            .delete(&class_name, &DeleteParams::default())
            .await
            .unwrap();
        kubectl_ok(cp, &["delete", "clusterrolebinding", &binding]);
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

/// The server API of the ChatCluster `name`'s first Ready chat-node.
async fn node_api(client: &Client, ns: &str, name: &str) -> ServerApi {
    let selector = format!("app.kubernetes.io/name=chat-node,app.kubernetes.io/instance={name}");
    let (node_ip, _) = ready_pod(client, ns, &selector, None).await;
    ServerApi::of(client, ns, name, &node_ip).await
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
        // No `spec.redis.storage`: the volume is the operator's default, on the class the
        // operator is given (the node has no default StorageClass, and one made here would be
        // every concurrent test's).
        let _operator =
            start_operator_with(cp, &ns, &["--default-redis-storage-class", &class_name]).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        clusters
            .create(&PostParams::default(), &cluster("durable", Value::Null))
            .await
            .unwrap();
        wait_for("durable Ready", || async {
            (clusters.get("durable").await.ok()?.status?.phase == Some(Phase::Ready)).then_some(())
        })
        .await;

        let api = node_api(&client, &ns, "durable").await;
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

        // Deleting the ChatCluster keeps the default volume's claim (a default volume is
        // retained, as `whenDeleted` defaults to Retain); deleting the claim by hand frees the
        // volume (Released: it was bound and is no more).
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        clusters
            .delete("durable", &DeleteParams::default())
            .await
            .unwrap();
        wait_for_absence::<StatefulSet>(&client, &ns, "durable-redis").await;
        wait_for_absence::<Pod>(&client, &ns, "durable-redis-0").await;
        let kept = claims.get("data-durable-redis-0").await.unwrap();
        assert!(
            kept.metadata.deletion_timestamp.is_none(),
            "the retained claim is being deleted"
        );
        claims
            .delete("data-durable-redis-0", &DeleteParams::default())
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

        let api = node_api(&client, &ns, "sturdy").await;
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
