//! Integration tests against a real kube-apiserver + etcd + kube-controller-manager (v1.36,
//! Go-built by the test harness), through kube-rs clients and the harness's kubectl 1.36.
//!
//! One test binary, so every test shares one control plane; each test works in its own
//! namespace with its own operator (watching only that namespace) that runs under the
//! generated least-privilege ClusterRole, bound to a ServiceAccount the operator impersonates.
//!
//! Most tests need no running pod: every request the operator makes is a request to the API
//! server, so they share the API-only control plane (no kubelet). A test whose pods must run
//! (`lifecycle::steady_state_writes_nothing`) uses the real node instead
//! (`support::node_control_plane`: kubelet, containerd and the repository's images, one per
//! machine, under a lock). Nothing here marks pods Ready by hand.

mod admission;
mod air_gapped;
mod autoscaling;
mod channels;
mod endpoint;
mod examples;
mod image;
mod kstatus;
mod leader;
mod lifecycle;
mod namespaces;
mod ownership;
mod redis_sentinel;
mod redis_storage;
mod server_api;
mod support;
mod validation;
