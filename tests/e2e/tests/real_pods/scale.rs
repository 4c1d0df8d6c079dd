//! `kubectl scale chat/<name>` 2 → 3 → 1: pods and the Service's ready endpoints follow (through
//! the scale subresource, the Deployment, real pods and their probes); deleting the ChatCluster
//! garbage-collects every child, pods included.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{Env, chat_cluster, env, eventually};

const NODES: &str = "app.kubernetes.io/instance=scaled,app.kubernetes.io/name=chat-node";

/// Addresses of the ready endpoints of the client Service `scaled`.
fn ready_endpoints(env: &Env, ns: &str) -> BTreeSet<String> {
    let slices = env.get(
        ns,
        &["endpointslices", "-l", "kubernetes.io/service-name=scaled"],
    );
    slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `count` chat-node pods are Ready and the Service has exactly their addresses.
async fn wait_for_replicas(env: &Env, ns: &str, count: usize) {
    eventually(
        Duration::from_secs(120),
        &format!("{count} ready chat-nodes behind the Service"),
        || {
            let pods = env.get(ns, &["pods", "-l", NODES]);
            let ready_ips: BTreeSet<String> = pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    crate::support::condition(p, "Ready").is_some_and(|c| c["status"] == "True")
                })
                .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
                .collect();
            let all = pods["items"].as_array().unwrap().len();
            (ready_ips.len() == count && all == count && ready_endpoints(env, ns) == ready_ips)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_follows_through_pods_and_endpoints_and_deleting_collects_everything() {
    let env = env().await;
    let ns = env.namespace("e2e-scale");
    let ns = ns.name().to_owned();
    env.apply(
        &ns,
        &chat_cluster(
            "scaled",
            2,
            "    provider: traefik\n    host: scale.e2e.test\n",
        ),
    );
    env.wait_chat_ready(&ns, "scaled").await;
    wait_for_replicas(env, &ns, 2).await;

    for replicas in [3, 1] {
        env.kubectl
            .run([
                "scale",
                "chat/scaled",
                "-n",
                &ns,
                &format!("--replicas={replicas}"),
            ])
            .unwrap();
        wait_for_replicas(env, &ns, replicas).await;
        let chat = env.wait_chat_ready(&ns, "scaled").await;
        assert_eq!(
            chat["status"]["readyReplicas"], replicas as i64,
            "{}",
            chat["status"]
        );
    }

    env.kubectl
        .run(["delete", "chat", "scaled", "-n", &ns, "--wait=false"])
        .unwrap();
    eventually(Duration::from_secs(120), "every child to be collected", || {
        let left = env
            .kubectl
            .run([
                "get",
                "pods,deployments,statefulsets,services,secrets,ingresses,networkpolicies,poddisruptionbudgets,configmaps",
                "-n",
                &ns,
                "-l",
                "app.kubernetes.io/instance=scaled",
                "-o",
                "name",
            ])
            .unwrap();
        left.trim().is_empty().then_some(())
    })
    .await;
}
