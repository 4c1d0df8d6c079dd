//! End-to-end tests in real pods, on the real node of the test harness (kubelet v1.36.3 +
//! containerd v2.4.2 + runc, CoreDNS, Traefik; see docs/testing.md). Nothing here marks a pod
//! Ready or plays a controller: the operator runs as a pod installed by Helm from its image,
//! chat-nodes and Redis run from theirs, readiness comes from their own probes, and clients go
//! through Traefik as users' clients go through their ingress.
//!
//! One test binary, so the node and the operator installation are shared; each test works in
//! its own namespace (ChatClusters with a host-less Ingress take turns: see
//! `support::hostless`).

mod browser;
mod client;
mod gateway;
mod ingress;
mod operator_pod;
mod quickstart;
mod redis;
mod rollout;
mod scale;
mod support;
mod traffic;
