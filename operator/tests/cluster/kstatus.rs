//! kstatus, the health model of Flux (`wait: true`), Helm 4 (`--wait`) and kpt, computed by the
//! real library (`sigs.k8s.io/cli-utils/pkg/kstatus/status`, through tests/tools/kstatus) on
//! ChatClusters as the operator leaves them in a real API server:
//! - healthy (nothing to run: `replicas: 0`, external Redis; everything applied) → Current;
//! - progressing (one chat-node pod that never runs on this kubelet-less control plane) →
//!   InProgress, reason `RolloutInProgress`, and InProgress again right after a spec change
//!   (generation not yet observed);
//! - failed (an image outside the operator's allow-list) → Failed with the operator's message.

use std::io::Write;
use std::process::{Command, Stdio};

use chat_operator::api::{ChatCluster, condition_types, reasons};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::*;

/// kstatus' verdict on each ChatCluster of `ns`, by name: (status, message).
fn kstatus(cp: &test_harness::kube::ControlPlane, ns: &str) -> Vec<(String, String, String)> {
    let list = kubectl_ok(cp, &["get", "chatclusters", "-n", ns, "-o", "json"]);
    let mut child = Command::new(test_harness::tools::kstatus_check())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kstatus-check runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kstatus-check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verdicts: Vec<(String, String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let name = v["name"].as_str().unwrap();
            (
                name.rsplit('/').next().unwrap().to_owned(),
                v["status"].as_str().unwrap().to_owned(),
                v["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    verdicts.sort();
    verdicts
}

fn cluster(name: &str, spec: Value) -> ChatCluster {
    serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// Waits until the operator has written condition `type_` of `name` with `status` for the
/// current generation.
async fn wait_for_condition(clusters: &Api<ChatCluster>, name: &str, type_: &str, status: &str) {
    wait_for(&format!("{name}: {type_}={status}"), || async {
        let c = clusters.get(name).await.ok()?;
        let generation = c.metadata.generation;
        let s = c.status?;
        let cond = s.condition(type_)?;
        (cond.status == status
            && cond.observed_generation == generation
            && s.observed_generation == generation)
            .then_some(())
    })
    .await
}

#[tokio::test]
async fn healthy_progressing_and_failed_clusters_are_current_in_progress_and_failed() {
    let cp = control_plane().await;
    cp.with_temp_ns("kstatus", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let redis = json!({"mode": "external", "url": "redis://redis.example.invalid:6379"});
        for (name, spec) in [
            ("healthy", json!({"replicas": 0, "redis": redis})),
            ("progressing", json!({"replicas": 1, "redis": redis})),
            (
                "failed",
                json!({"replicas": 1, "redis": redis, "image": "docker.io/attacker/x:1"}),
            ),
        ] {
            clusters
                .create(&PostParams::default(), &cluster(name, spec))
                .await
                .unwrap();
        }
        wait_for_condition(&clusters, "healthy", condition_types::READY, "True").await;
        wait_for_condition(&clusters, "healthy", condition_types::RECONCILING, "False").await;
        wait_for_condition(
            &clusters,
            "progressing",
            condition_types::RECONCILING,
            "True",
        )
        .await;
        wait_for_condition(&clusters, "failed", condition_types::STALLED, "True").await;

        let verdicts = kstatus(cp, &ns);
        let statuses: Vec<(&str, &str)> = verdicts
            .iter()
            .map(|(name, status, _)| (name.as_str(), status.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("failed", "Failed"),
                ("healthy", "Current"),
                ("progressing", "InProgress"),
            ],
            "{verdicts:#?}"
        );
        let failed = &verdicts[0].2;
        assert!(
            failed.contains("docker.io/attacker/x:1"),
            "Failed says why: {failed}"
        );
        let progressing = clusters.get("progressing").await.unwrap();
        let reconciling = progressing
            .status
            .as_ref()
            .and_then(|s| s.condition(condition_types::RECONCILING))
            .unwrap();
        assert_eq!(reconciling.reason, reasons::ROLLOUT_IN_PROGRESS);

        // A spec change: InProgress from the moment it is stored (the generation is not yet
        // observed), and still InProgress once the operator has seen it (a pod to roll out).
        clusters
            .patch(
                "healthy",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 1}})),
            )
            .await
            .unwrap();
        let healthy = kstatus(cp, &ns)
            .into_iter()
            .find(|(name, _, _)| name == "healthy")
            .unwrap();
        assert_eq!(healthy.1, "InProgress", "{healthy:?}");
        wait_for_condition(&clusters, "healthy", condition_types::RECONCILING, "True").await;
        let healthy = kstatus(cp, &ns)
            .into_iter()
            .find(|(name, _, _)| name == "healthy")
            .unwrap();
        assert_eq!(healthy.1, "InProgress", "{healthy:?}");
        operator.stop().await;
    })
    .await;
}
