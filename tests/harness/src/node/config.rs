//! Configuration files of the node's components (see docs/testing.md, "The real node", and
//! ../shared/design/REAL-NODE.md for why each setting is needed on this machine kind).

use std::path::Path;

use super::{BRIDGE, BRIDGE_IP, DNS_IP, NODE_NAME, POD_CIDR};

/// containerd's config (the version 4 schema of containerd v2.4): everything under the node's
/// directories, no imports from /etc, CRI with runc (cgroupfs), the CNI config of
/// [`cni_conflist`], the pinned sandbox image, NRI off.
pub fn containerd(run: &Path, lib: &Path, sandbox_image: &str) -> String {
    let run = run.display();
    let lib = lib.display();
    format!(
        r#"version = 4
root = "{lib}/containerd"
state = "{run}/containerd"
imports = []

[plugins."io.containerd.server.v1.grpc"]
  address = "{run}/containerd.sock"

[plugins."io.containerd.server.v1.ttrpc"]
  address = "{run}/containerd.sock.ttrpc"

[plugins."io.containerd.server.v1.debug"]
  address = ""

[plugins."io.containerd.server.v1.metrics"]
  address = ""

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"

[plugins."io.containerd.cri.v1.runtime"]
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the shim's own.
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "runc"
        Root = "{run}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{run}/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.internal.v1.opt"]
  path = "{lib}/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "{run}/s"

[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{lib}/image-verifier"
"#
    )
}

/// The pod network: a bridge with the node's address as the pods' gateway, no masquerading
/// (pods never talk to anything off the machine), hairpin so a pod reaches itself through its
/// Service, host-local addresses kept under the node's directory.
pub fn cni_conflist(run: &Path) -> String {
    let ipam_dir = run.join("cni/ipam");
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "chatcluster",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    }))
    .expect("json")
}

/// The kubelet's `KubeletConfiguration`.
pub fn kubelet(run: &Path, lib: &Path, client_ca: &Path) -> String {
    let run = run.display();
    let lib = lib.display();
    let client_ca = client_ca.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {BRIDGE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {client_ca}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://{run}/containerd.sock
# This machine kind has cgroup v1, which kubelet 1.35+ refuses unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
clusterDNS:
- {DNS_IP}
clusterDomain: cluster.local
# An empty resolv.conf: pods learn no name server of the host (no query leaves the machine).
resolvConf: {run}/resolv.conf
podLogsDir: {lib}/pod-logs
serializeImagePulls: false
maxPods: 110
rotateCertificates: false
serverTLSBootstrap: false
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
"#
    )
}

/// kube-proxy's `KubeProxyConfiguration`: iptables mode, node ports only on the node's bridge
/// address, conntrack sysctls left alone.
pub fn kube_proxy(kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
nodePortAddresses:
- {BRIDGE_IP}/32
iptables:
  localhostNodePorts: false
  minSyncPeriod: 0s
  syncPeriod: 30s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = kubeconfig.display()
    )
}
