//! `spec.redis.replicas: 3` on the real node: a primary, two replicas and a Sentinel beside
//! each, run by the operator; chat-nodes follow the primary through Sentinel
//! (`redis+sentinel://`) and acknowledge a publish only once a replica has it.
//!
//! The primary's pod is deleted: the sentinels promote a replica, chat-nodes publish through
//! the new primary without restarting, every acknowledged message is still in the history
//! (same epoch), and the deleted pod comes back as a replica, not as an empty primary. The same
//! with Valkey (`spec.redis.image: docker.io/valkey/valkey:8.0`) for Redis and Sentinel.

use std::time::Duration;

use chat_operator::api::{ChatCluster, Phase};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const REDIS_PODS: &str = "app.kubernetes.io/name=redis,app.kubernetes.io/instance=ha";
const NODE_PODS: &str = "app.kubernetes.io/name=chat-node,app.kubernetes.io/instance=ha";

/// One command to a Sentinel at `ip:26379` in RESP; the bulk strings of its answer.
async fn sentinel(ip: &str, args: &[&str]) -> Option<Vec<String>> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, 26379)),
    )
    .await
    .ok()?
    .ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    // `*2\r\n$<n>\r\n<host>\r\n$4\r\n6379\r\n`: every line after a `$` header.
    let lines: Vec<&str> = text.split("\r\n").collect();
    Some(
        lines
            .windows(2)
            .filter(|w| w[0].starts_with('$') && w[0] != "$-1")
            .map(|w| w[1].to_owned())
            .collect(),
    )
}

/// The primary the sentinels name, asked through the Sentinel of pod `ip`: the pod's name.
async fn primary_via(ip: &str) -> Option<String> {
    let answer = sentinel(ip, &["SENTINEL", "get-master-addr-by-name", "chat"]).await?;
    let host = answer.first()?;
    Some(host.split('.').next()?.to_owned())
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_failover_loses_no_acknowledged_message_and_the_old_primary_returns_as_a_replica() {
    failover("redis-ha", None).await;
}

/// The same on Valkey, the open-source fork of Redis: the operator's Redis and Sentinel
/// scripts, probes and configuration run unchanged on its image.
#[tokio::test]
async fn on_valkey_a_failover_loses_no_acknowledged_message_either() {
    failover("valkey-ha", Some(test_harness::node::images::VALKEY)).await;
}

/// Runs the HA Redis of `image` (the operator's default when `None`) through a failover.
async fn failover(prefix: &str, image: Option<&str>) {
    let cp = node_control_plane().await;
    cp.with_temp_ns(prefix, |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let _operator = start_operator_with(
            cp,
            &ns,
            &[
                "--allowed-image-prefixes",
                "ghcr.io/chatcluster/,docker.io/valkey/",
            ],
        )
        .await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let mut redis = json!({"mode": "managed", "replicas": 3});
        if let Some(image) = image {
            redis["image"] = json!(image);
        }
        let cluster: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "ha"},
            "spec": {"anonymous": true, "replicas": 2, "redis": redis}}))
        .unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();

        // The Redis PodDisruptionBudget lets one pod go at a time.
        let pdb: PodDisruptionBudget = wait_for_object(&client, &ns, "ha-redis").await;
        assert_eq!(
            serde_json::to_value(pdb.spec.unwrap().max_unavailable).unwrap(),
            json!(1)
        );
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        if let Some(image) = image {
            let spec = sets.get("ha-redis").await.unwrap().spec.unwrap();
            let containers = spec.template.spec.unwrap().containers;
            assert!(containers.iter().all(|c| c.image.as_deref() == Some(image)));
        }
        wait_for("3 Redis pods ready", || async {
            (sets.get("ha-redis").await.ok()?.status?.ready_replicas == Some(3)).then_some(())
        })
        .await;
        wait_for("ha Ready", || async {
            (clusters.get("ha").await.ok()?.status?.phase == Some(Phase::Ready)).then_some(())
        })
        .await;

        // Every sentinel names pod 0 the primary, and knows the two replicas and the others.
        let redis = ready_pods(&client, &ns, REDIS_PODS).await;
        for (pod, ip, _) in &redis {
            let primary = wait_for(&format!("{pod}'s sentinel names a primary"), || async {
                primary_via(ip).await
            })
            .await;
            assert_eq!(primary, "ha-redis-0", "as seen by {pod}");
        }
        let (_, any_sentinel, _) = redis[0].clone();
        wait_for(
            "the sentinels know 2 replicas and 2 other sentinels",
            || async {
                let master = sentinel(&any_sentinel, &["SENTINEL", "master", "chat"]).await?;
                let field = |name: &str| {
                    master
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| master.get(i + 1))
                        .cloned()
                };
                (field("num-slaves")? == "2" && field("num-other-sentinels")? == "2").then_some(())
            },
        )
        .await;

        let nodes = ready_pods(&client, &ns, NODE_PODS).await;
        assert_eq!(nodes.len(), 2);
        let api = ServerApi::of(&client, &ns, "ha", &nodes[0].1).await;
        const BEFORE: usize = 20;
        for i in 0..BEFORE {
            api.call(
                "publish",
                json!({"channel": "chat:lobby", "data": {"n": i}}),
            )
            .await
            .unwrap_or_else(|| panic!("publish {i} refused"));
        }
        let history = || api.history("chat:lobby");
        let (epoch, before) = history().await.expect("history");
        assert_eq!(before.len(), BEFORE);

        // The primary's pod goes.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let old = pods.get("ha-redis-0").await.unwrap();
        pods.delete("ha-redis-0", &DeleteParams::default())
            .await
            .unwrap();
        let survivor = redis
            .iter()
            .find(|(pod, _, _)| pod != "ha-redis-0")
            .map(|(_, ip, _)| ip.clone())
            .unwrap();
        let promoted = wait_for("the sentinels promote a replica", || async {
            primary_via(&survivor).await.filter(|p| p != "ha-redis-0")
        })
        .await;

        // Publishing works again through the new primary, with a replica's acknowledgement.
        const AFTER: usize = 20;
        for i in 0..AFTER {
            wait_for(&format!("publish {i} after the failover"), || {
                api.call(
                    "publish",
                    json!({"channel": "chat:lobby", "data": {"after": i}}),
                )
            })
            .await;
        }
        let (epoch_after, offsets) = wait_for("history after the failover", || async {
            history().await.filter(|(_, o)| o.len() == BEFORE + AFTER)
        })
        .await;
        assert_eq!(
            epoch_after, epoch,
            "the history is another one (a new epoch)"
        );
        assert_eq!(
            &offsets[..BEFORE],
            &before[..],
            "an acknowledged message was lost"
        );

        // The deleted pod comes back, as a replica of the promoted one.
        wait_for("ha-redis-0 back and ready", || async {
            let again = ready_pods(&client, &ns, REDIS_PODS).await;
            again
                .iter()
                .any(|(pod, _, uid)| pod == "ha-redis-0" && Some(uid) != old.uid().as_ref())
                .then_some(())
        })
        .await;
        let again = ready_pods(&client, &ns, REDIS_PODS).await;
        let (_, new_ip, _) = again
            .iter()
            .find(|(pod, _, _)| pod == "ha-redis-0")
            .unwrap();
        let seen = wait_for("the returned pod's sentinel names the primary", || async {
            primary_via(new_ip).await
        })
        .await;
        assert_eq!(seen, promoted, "the returned pod took the primary back");
        assert_eq!(
            primary_via(&survivor).await.as_deref(),
            Some(promoted.as_str())
        );

        // chat-nodes rode it out without restarting.
        for (name, _, _) in &nodes {
            let pod = pods.get(name).await.unwrap();
            assert_eq!(restarts(&pod), 0, "{name} restarted");
        }
    })
    .await;
}

/// `spec.redis.replicas` is checked by the API server: 1, 3, 5 or 7, managed only, immutable;
/// `spec.redis.mode` defaults to `managed`.
#[tokio::test]
async fn redis_replicas_are_odd_managed_and_immutable() {
    let cp = control_plane().await;
    cp.with_temp_ns("redis-replicas", |client, ns| async move {
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let cluster = |name: &str, redis: Value| -> ChatCluster {
            serde_json::from_value(json!({
                "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
                "metadata": {"name": name}, "spec": {"anonymous": true, "redis": redis}}))
            .unwrap()
        };
        for (redis, message) in [
            (
                json!({"mode": "managed", "replicas": 2}),
                "spec.redis.replicas must be 1, or 3, 5 or 7",
            ),
            (
                json!({"mode": "external", "url": "redis://r:6379", "replicas": 3}),
                "apply only to mode managed",
            ),
        ] {
            let refused = clusters
                .create(&PostParams::default(), &cluster("bad", redis.clone()))
                .await
                .expect_err(&redis.to_string());
            assert!(refused.to_string().contains(message), "{refused}");
        }
        clusters
            .create(
                &PostParams::default(),
                &cluster("ha", json!({"mode": "managed", "replicas": 3})),
            )
            .await
            .unwrap();
        for replicas in [json!(5), json!(1), Value::Null] {
            let refused = clusters
                .patch(
                    "ha",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"spec": {"redis": {"replicas": replicas}}})),
                )
                .await
                .expect_err("replicas changed");
            assert!(
                refused
                    .to_string()
                    .contains("spec.redis.replicas is immutable"),
                "{refused}"
            );
        }

        // `mode` may be left out: the API server stores its default, `managed`.
        let bare = json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "bare", "namespace": ns},
            "spec": {"anonymous": true, "redis": {"replicas": 3}}});
        let (ok, _, err) = kubectl_stdin(cp, &["create", "-f", "-"], &bare.to_string());
        assert!(ok, "{err}");
        let stored = clusters.get("bare").await.unwrap();
        let redis = stored.spec.redis.expect("spec.redis");
        assert_eq!(
            (redis.mode, redis.replicas),
            (chat_operator::api::RedisMode::Managed, Some(3))
        );
    })
    .await;
}
