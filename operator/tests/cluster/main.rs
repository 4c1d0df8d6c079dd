//! Integration tests against a real kube-apiserver + etcd + kube-controller-manager (v1.36,
//! Go-built by the test harness), through kube-rs clients and the harness's kubectl 1.36.
//!
//! One test binary, so every test shares one control plane; each test works in its own
//! namespace with its own operator (watching only that namespace) that runs under the
//! generated least-privilege ClusterRole, bound to a ServiceAccount the operator impersonates.
//!
//! There is no kubelet: pods never run. Where a test needs ready pods it plays the kubelet and
//! marks the pods Ready through their status subresource (see `support::mark_pods_ready`); the
//! ReplicaSet/StatefulSet/Deployment controllers then compute readiness as they would in a
//! real cluster.

mod endpoint;
mod examples;
mod image;
mod leader;
mod lifecycle;
mod support;
mod validation;
