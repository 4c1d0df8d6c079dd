//! chat-sandbox: the whole system on one machine, without a cluster or Docker.
//!
//! It starts the real test control plane (etcd + kube-apiserver + controllers, as the
//! operator's tests use), installs the CRD, runs `chat-operator run` against it, applies an
//! example ChatCluster, and then plays the node: the [`kubelet`] runs the operator's pods as
//! local processes — exactly their command, args and env, with ports mapped to free loopback
//! ports — reports their readiness, and keeps an nginx [`proxy`] configured from the
//! operator's Ingress in front of them. See `docs/sandbox.md`.

pub mod kubelet;
pub mod pod_command;
pub mod ports;
pub mod proxy;
pub mod run;
