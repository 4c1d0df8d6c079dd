//! The operator installed by `helm install` runs as pods from its image under the chart's
//! ServiceAccount; with two replicas one holds the Lease, and deleting the leader's pod hands
//! the Lease to the other replica, which then reconciles.

use std::time::Duration;

use test_harness::node::images;

use crate::support::{Env, OPERATOR_NS, RELEASE, env, eventually};

/// Uncordons the node when dropped (also when the test fails).
struct Uncordon(&'static Env);

impl Drop for Uncordon {
    fn drop(&mut self) {
        let _ = self
            .0
            .kubectl
            .run(["uncordon", test_harness::node::NODE_NAME]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_as_pods_and_the_lease_moves_when_the_leader_pod_is_deleted() {
    let env = env().await;
    let pods = env.get(
        OPERATOR_NS,
        &["pods", "-l", "app.kubernetes.io/name=chat-operator"],
    );
    let pods = pods["items"].as_array().unwrap().clone();
    assert_eq!(pods.len(), 2, "the chart's default is two replicas");
    for pod in &pods {
        assert_eq!(pod["spec"]["serviceAccountName"], RELEASE);
        assert_eq!(pod["spec"]["containers"][0]["image"], images::operator());
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(status["ready"], true, "{status}");
        assert_eq!(status["restartCount"], 0, "{status}");
        // What the image promises, under the chart's restricted security context: non-root, a
        // read-only root filesystem, no shell.
        let security = &pod["spec"]["containers"][0]["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{security}");
        assert_eq!(security["runAsNonRoot"], true, "{security}");
        let name = pod["metadata"]["name"].as_str().unwrap();
        let shell = env
            .kubectl
            .run(["exec", "-n", OPERATOR_NS, name, "--", "sh", "-c", "true"]);
        assert!(shell.is_err(), "the operator image has no shell");
    }

    let leader = env.lease_holder().expect("a leader");
    let leader_pod = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .find(|name| leader.contains(name))
        .unwrap_or_else(|| panic!("the Lease holder {leader} is one of the operator's pods"))
        .to_owned();
    let other = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .find(|name| *name != leader_pod)
        .unwrap()
        .to_owned();

    // Graceful deletion: the leader releases the Lease on SIGTERM and the standby takes it.
    // The node is cordoned meanwhile, so that the Deployment's replacement pod cannot start
    // and race the standby for the Lease: the handoff is to the replica that was waiting.
    env.kubectl
        .run(["cordon", test_harness::node::NODE_NAME])
        .unwrap();
    let uncordon = Uncordon(env);
    env.kubectl
        .run([
            "delete",
            "pod",
            &leader_pod,
            "-n",
            OPERATOR_NS,
            "--wait=false",
        ])
        .unwrap();
    let holder = eventually(
        Duration::from_secs(30),
        "another replica to take the Lease",
        || env.lease_holder().filter(|h| *h != leader),
    )
    .await;
    drop(uncordon);
    assert!(
        holder.contains(&other),
        "the standby {other} took the Lease, not {holder}"
    );

    // The new leader reconciles: a ChatCluster created now becomes Ready.
    let ns = env.namespace("e2e-leader");
    env.apply(
        ns.name(),
        "apiVersion: realtime.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: after-handoff\nspec:\n  replicas: 1\n",
    );
    env.wait_chat_ready(ns.name(), "after-handoff").await;
    // And the Deployment replaced the deleted pod.
    eventually(
        Duration::from_secs(60),
        "two ready operator pods again",
        || {
            let d = env.get(OPERATOR_NS, &["deployment", RELEASE]);
            (d["status"]["readyReplicas"] == 2).then_some(())
        },
    )
    .await;
}
