//! The clusters of the chart tests, from the test harness: the shared API-only control plane
//! (`rbac.rs`, `gitops.rs`) and the real node (`lifecycle.rs`, where pods run). kubectl, Helm,
//! namespaces and waiting come from the harness too (`test_harness::{kubectl, helm, wait}`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use test_harness::kube::ControlPlane;
use test_harness::node::Cluster;

/// Runs a harness future to completion. The harness is async; these tests drive kubectl and
/// Helm as processes, so one small runtime, kept for the whole process, runs it.
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime")
        })
        .block_on(future)
}

/// The shared API-only test control plane of this test process (no kubelet: pods are created
/// but never run; started on first use, its processes die with the test process).
pub fn control_plane() -> &'static ControlPlane {
    block_on(ControlPlane::shared())
}

/// The admin kubeconfig of the shared API-only control plane.
pub fn control_plane_kubeconfig() -> PathBuf {
    control_plane().kubeconfig_path().to_path_buf()
}

/// A kubeconfig of the shared API-only control plane that authenticates as the admin but
/// impersonates ServiceAccount `namespace/name` (with the groups a ServiceAccount token
/// carries): every request is authorized exactly as the ServiceAccount's would be.
pub fn service_account_kubeconfig(namespace: &str, name: &str) -> PathBuf {
    control_plane().kubeconfig_for_service_account(namespace, name)
}

/// Applies CRD manifests to `control_plane` and waits until each is Established.
pub fn install_crds<P: AsRef<Path>>(control_plane: &ControlPlane, paths: &[P]) -> Vec<String> {
    block_on(control_plane.install_crds(paths))
}

/// The real node of this machine (control plane, kubelet, containerd, CoreDNS, Traefik, the
/// repository's images), shared by the test process; waits while another process holds it.
pub fn node() -> &'static Cluster {
    block_on(Cluster::shared())
}
