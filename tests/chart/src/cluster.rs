//! The chart tests' view of the shared test control plane; kubectl, namespaces, waiting and the
//! operator process come from the test harness.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};
use test_harness::kube::ControlPlane;
pub use test_harness::kubectl::{Kubectl, KubectlError as ClusterError, TempNamespace};
pub use test_harness::operator::{OperatorProcess, operator_binary};
pub use test_harness::wait::wait_for;

/// The shared test control plane of this test process (started on first use; its processes die
/// with the test process). The harness is async; these tests drive kubectl and Helm as
/// processes, so one small runtime, kept for the whole process, runs the harness.
pub fn control_plane() -> &'static ControlPlane {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    runtime.block_on(ControlPlane::shared())
}

/// The admin kubeconfig of the shared test control plane.
pub fn control_plane_kubeconfig() -> PathBuf {
    control_plane().kubeconfig_path().to_path_buf()
}

/// A kubeconfig that authenticates as the admin but impersonates ServiceAccount
/// `namespace/name` (with the groups a ServiceAccount token carries): every request is
/// authorized exactly as the ServiceAccount's would be.
pub fn service_account_kubeconfig(namespace: &str, name: &str) -> PathBuf {
    control_plane().kubeconfig_for_service_account(namespace, name)
}

/// Plays kubelet for readiness: every pod in `namespace` matching `selector` that is not Ready
/// gets `phase: Running` and `Ready`/`ContainersReady` conditions through the status
/// subresource. The Deployment/StatefulSet controllers then compute ready replicas as usual.
/// Returns how many pods it marked.
pub fn mark_pods_ready(
    kubectl: &Kubectl,
    namespace: &str,
    selector: &str,
) -> Result<usize, ClusterError> {
    let pods = kubectl.json(["get", "pods", "-n", namespace, "-l", selector])?;
    let mut marked = 0;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready || pod["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let now = "2026-01-01T00:00:00Z";
        let condition =
            |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": true,
                    "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}
                })
            })
            .collect();
        let patch = json!({"status": {
            "phase": "Running",
            "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
            "containerStatuses": containers,
        }});
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        // A pod replaced meanwhile is not an error: the next round marks its successor.
        if kubectl
            .run([
                "patch",
                "pod",
                name,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ])
            .is_ok()
        {
            marked += 1;
        }
    }
    Ok(marked)
}
