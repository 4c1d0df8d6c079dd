//! chat-sandbox: the whole system on one machine, in real pods, without a cluster or Docker.
//!
//! It starts the test harness's real node (`test_harness::node::Cluster`: control plane,
//! kubelet + containerd + runc, kube-proxy, CoreDNS, Traefik on a loopback port; images built
//! from this repository), installs the operator with the Helm chart (it runs as pods from its
//! image), applies an example ChatCluster and prints where its demo page is. Ctrl-C tears the
//! node down and leaves the host as it was. See `docs/sandbox.md`.

pub mod run;
