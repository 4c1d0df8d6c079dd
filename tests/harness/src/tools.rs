//! Paths of the real tools the tests drive, built or installed by `hack/setup.d/*.sh`.
//!
//! Lookup order for each tool: its environment variable (exported by the setup step), then
//! the version-pinned path in the cache (`$CHATCLUSTER_CACHE`, default
//! `~/.cache/chatcluster`), then `PATH` — except for the control-plane binaries, which are
//! never taken from `PATH` (a distribution's kubectl is the wrong version). A missing tool is
//! a panic naming `hack/setup.sh`; the `find` function returns the error instead.
//!
//! | fn | env var | cache path | PATH name |
//! |---|---|---|---|
//! | [`kubectl`], [`kube_bin_dir`] | `CHATCLUSTER_KUBE_BIN` (dir) | `kube-v1.36.3/bin/` | — |
//! | [`helm`] | `CHATCLUSTER_HELM` | `helm-v3.21.4/bin/helm` | `helm` |
//! | [`helm4`] | `CHATCLUSTER_HELM4` | `helm-v4.3.2/bin/helm` | — |
//! | [`otelcol`] | `CHATCLUSTER_OTELCOL` | `otelcol-v0.165.0/bin/otelcol` | `otelcol` |
//! | [`kstatus_check`] | `CHATCLUSTER_KSTATUS` | `kstatus-cli-utils-v0.37.2/bin/kstatus-check` | — |
//! | [`metrics_adapter`] | `CHATCLUSTER_METRICS_ADAPTER` | `metrics-adapter-cma-v1.36.0/bin/metrics-adapter` | — |
//! | [`prometheus_operator`] | `CHATCLUSTER_PROMETHEUS_OPERATOR` | `prometheus-operator-v0.93.0/bin/prometheus-operator` | — |
//! | [`prometheus_operator_crds`] | `CHATCLUSTER_PROMETHEUS_OPERATOR_CRDS` (dir) | `prometheus-operator-v0.93.0/crds/` | — |
//! | [`promtool`] | `CHATCLUSTER_PROMTOOL` | — | `promtool` |
//! | [`grpcurl`] | `CHATCLUSTER_GRPCURL` | `grpcurl-v1.9.3/bin/grpcurl` | `grpcurl` |
//! | [`amtool`] | `CHATCLUSTER_AMTOOL` | — | `amtool` |
//! | [`prometheus`] | `CHATCLUSTER_PROMETHEUS` | — | `prometheus` |
//! | [`alertmanager`] | `CHATCLUSTER_ALERTMANAGER` | — | `prometheus-alertmanager`, `alertmanager` |
//! | `find(Tool::Containerd)`, `Tool::Ctr` | `CHATCLUSTER_CONTAINERD_BIN` (dir) | `containerd-v2.4.2/bin/` | — |
//! | `find(Tool::Coredns)` | `CHATCLUSTER_COREDNS` | `coredns-v1.15.0/bin/coredns` | — |
//! | `find(Tool::Traefik)` | `CHATCLUSTER_TRAEFIK` | `traefik-v3.6.12/bin/traefik` | — |
//! | [`gateway_api_crds`] | `CHATCLUSTER_GATEWAY_API_CRDS` (dir) | `gateway-api-v1.4.0/` | — |

use std::path::{Path, PathBuf};

use crate::Error;

/// Kubernetes release of the test control plane (kept equal to hack/setup.d/20-controlplane.sh).
pub const KUBE_VERSION: &str = "v1.36.3";
/// Helm 3 release (kept equal to hack/setup.d/30-helm.sh).
pub const HELM_VERSION: &str = "v3.21.4";
/// Helm 4 release (kept equal to hack/setup.d/30-helm.sh).
pub const HELM4_VERSION: &str = "v4.3.2";
/// OpenTelemetry Collector builder release (kept equal to hack/setup.d/31-otelcol.sh).
pub const OTELCOL_VERSION: &str = "v0.165.0";
/// sigs.k8s.io/cli-utils release of kstatus-check (kept equal to hack/setup.d/62-kstatus.sh).
pub const KSTATUS_VERSION: &str = "v0.37.2";
/// sigs.k8s.io/custom-metrics-apiserver release of the metrics adapter (kept equal to
/// hack/setup.d/64-metrics-adapter.sh).
pub const CUSTOM_METRICS_APISERVER_VERSION: &str = "v1.36.0";
/// prometheus-operator release (kept equal to hack/setup.d/63-prometheus-operator.sh).
pub const PROMETHEUS_OPERATOR_VERSION: &str = "v0.93.0";
/// containerd release of the test node (kept equal to hack/setup.d/21-node.sh).
pub const CONTAINERD_VERSION: &str = "v2.4.2";
/// CoreDNS release of the test node (kept equal to hack/setup.d/21-node.sh).
pub const COREDNS_VERSION: &str = "v1.15.0";
/// Traefik release of the test node (kept equal to hack/setup.d/21-node.sh).
pub const TRAEFIK_VERSION: &str = "v3.6.12";
/// grpcurl release, the gRPC client other than the project's own (kept equal to
/// hack/setup.d/32-grpcurl.sh).
pub const GRPCURL_VERSION: &str = "v1.9.3";
/// Gateway API release whose CRDs the test node installs (the one Traefik v3.6 implements).
pub const GATEWAY_API_VERSION: &str = "v1.4.0";

/// A tool the harness can locate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Kubectl,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Etcd,
    Helm,
    Helm4,
    Otelcol,
    KstatusCheck,
    MetricsAdapter,
    PrometheusOperator,
    Promtool,
    Amtool,
    Prometheus,
    Alertmanager,
    Containerd,
    Ctr,
    Coredns,
    Traefik,
    Grpcurl,
}

impl Tool {
    /// The tool's command name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Kubectl => "kubectl",
            Tool::KubeApiserver => "kube-apiserver",
            Tool::KubeControllerManager => "kube-controller-manager",
            Tool::KubeScheduler => "kube-scheduler",
            Tool::Etcd => "etcd",
            Tool::Helm | Tool::Helm4 => "helm",
            Tool::Otelcol => "otelcol",
            Tool::KstatusCheck => "kstatus-check",
            Tool::MetricsAdapter => "metrics-adapter",
            Tool::PrometheusOperator => "prometheus-operator",
            Tool::Promtool => "promtool",
            Tool::Amtool => "amtool",
            Tool::Prometheus => "prometheus",
            Tool::Alertmanager => "alertmanager",
            Tool::Containerd => "containerd",
            Tool::Ctr => "ctr",
            Tool::Coredns => "coredns",
            Tool::Traefik => "traefik",
            Tool::Grpcurl => "grpcurl",
        }
    }

    fn is_control_plane(self) -> bool {
        matches!(
            self,
            Tool::Kubectl
                | Tool::KubeApiserver
                | Tool::KubeControllerManager
                | Tool::KubeScheduler
                | Tool::Etcd
        )
    }

    fn env_var(self) -> Option<&'static str> {
        match self {
            Tool::Helm => Some("CHATCLUSTER_HELM"),
            Tool::Helm4 => Some("CHATCLUSTER_HELM4"),
            Tool::Otelcol => Some("CHATCLUSTER_OTELCOL"),
            Tool::KstatusCheck => Some("CHATCLUSTER_KSTATUS"),
            Tool::MetricsAdapter => Some("CHATCLUSTER_METRICS_ADAPTER"),
            Tool::PrometheusOperator => Some("CHATCLUSTER_PROMETHEUS_OPERATOR"),
            Tool::Promtool => Some("CHATCLUSTER_PROMTOOL"),
            Tool::Amtool => Some("CHATCLUSTER_AMTOOL"),
            Tool::Prometheus => Some("CHATCLUSTER_PROMETHEUS"),
            Tool::Alertmanager => Some("CHATCLUSTER_ALERTMANAGER"),
            Tool::Coredns => Some("CHATCLUSTER_COREDNS"),
            Tool::Traefik => Some("CHATCLUSTER_TRAEFIK"),
            Tool::Grpcurl => Some("CHATCLUSTER_GRPCURL"),
            _ => None,
        }
    }

    fn cache_path(self) -> Option<PathBuf> {
        let cache = cache_dir();
        match self {
            Tool::Helm => Some(cache.join(format!("helm-{HELM_VERSION}/bin/helm"))),
            Tool::Helm4 => Some(cache.join(format!("helm-{HELM4_VERSION}/bin/helm"))),
            Tool::Otelcol => Some(cache.join(format!("otelcol-{OTELCOL_VERSION}/bin/otelcol"))),
            Tool::KstatusCheck => Some(cache.join(format!(
                "kstatus-cli-utils-{KSTATUS_VERSION}/bin/kstatus-check"
            ))),
            Tool::MetricsAdapter => Some(cache.join(format!(
                "metrics-adapter-cma-{CUSTOM_METRICS_APISERVER_VERSION}/bin/metrics-adapter"
            ))),
            Tool::PrometheusOperator => Some(cache.join(format!(
                "prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}/bin/prometheus-operator"
            ))),
            Tool::Containerd | Tool::Ctr => Some(containerd_bin_dir().join(self.name())),
            Tool::Coredns => Some(cache.join(format!("coredns-{COREDNS_VERSION}/bin/coredns"))),
            Tool::Traefik => Some(cache.join(format!("traefik-{TRAEFIK_VERSION}/bin/traefik"))),
            Tool::Grpcurl => Some(cache.join(format!("grpcurl-{GRPCURL_VERSION}/bin/grpcurl"))),
            _ => None,
        }
    }

    fn path_names(self) -> &'static [&'static str] {
        match self {
            Tool::Alertmanager => &["prometheus-alertmanager", "alertmanager"],
            Tool::Helm => &["helm"],
            Tool::Otelcol => &["otelcol"],
            Tool::Promtool => &["promtool"],
            Tool::Amtool => &["amtool"],
            Tool::Prometheus => &["prometheus"],
            Tool::Grpcurl => &["grpcurl"],
            _ => &[],
        }
    }
}

/// `$CHATCLUSTER_CACHE`, else `$HOME/.cache/chatcluster` (where hack/lib.sh caches builds).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHATCLUSTER_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/chatcluster")
}

/// The directory of containerd, ctr and containerd-shim-runc-v2 (hack/setup.d/21-node.sh):
/// `$CHATCLUSTER_CONTAINERD_BIN`, else `<cache>/containerd-v2.4.2/bin`.
pub fn containerd_bin_dir() -> PathBuf {
    std::env::var_os("CHATCLUSTER_CONTAINERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(format!("containerd-{CONTAINERD_VERSION}/bin")))
}

/// The folder of the Gateway API CRDs (standard channel) fetched by hack/setup.d/21-node.sh.
pub fn gateway_api_crds() -> Result<PathBuf, Error> {
    let dir = std::env::var_os("CHATCLUSTER_GATEWAY_API_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(format!("gateway-api-{GATEWAY_API_VERSION}")));
    if dir
        .join("gateway.networking.k8s.io_httproutes.yaml")
        .is_file()
    {
        Ok(dir)
    } else {
        Err(Error::ToolMissing {
            tool: format!("Gateway API {GATEWAY_API_VERSION} CRDs"),
            looked: dir.display().to_string(),
        })
    }
}

/// The folder of every prometheus-operator CRD (Prometheus, Alertmanager, ...) fetched with its
/// binary by hack/setup.d/63-prometheus-operator.sh.
pub fn prometheus_operator_crds() -> Result<PathBuf, Error> {
    let dir = std::env::var_os("CHATCLUSTER_PROMETHEUS_OPERATOR_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            cache_dir().join(format!(
                "prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}/crds"
            ))
        });
    if dir
        .join("monitoring.coreos.com_prometheuses.yaml")
        .is_file()
    {
        Ok(dir)
    } else {
        Err(Error::ToolMissing {
            tool: format!("prometheus-operator {PROMETHEUS_OPERATOR_VERSION} CRDs"),
            looked: dir.display().to_string(),
        })
    }
}

/// Locates a tool (see the module docs for the order).
pub fn find(tool: Tool) -> Result<PathBuf, Error> {
    let mut looked = Vec::new();
    if tool.is_control_plane() {
        let dir = find_kube_bin_dir()?;
        let path = dir.join(tool.name());
        if is_executable(&path) {
            return Ok(path);
        }
        looked.push(path.display().to_string());
    } else {
        if let Some((var, value)) = tool
            .env_var()
            .and_then(|var| std::env::var_os(var).map(|value| (var, value)))
        {
            let path = PathBuf::from(value);
            if is_executable(&path) {
                return Ok(path);
            }
            looked.push(format!("${var}={}", path.display()));
        }
        if let Some(path) = tool.cache_path() {
            if is_executable(&path) {
                return Ok(path);
            }
            looked.push(path.display().to_string());
        }
        for name in tool.path_names() {
            if let Some(path) = search_path(name) {
                return Ok(path);
            }
            looked.push(format!("{name} in PATH"));
        }
    }
    Err(Error::ToolMissing {
        tool: tool.name().to_owned(),
        looked: looked.join(", "),
    })
}

/// The directory holding the Go-built control plane (kube-apiserver, etcd, kubectl, ...):
/// `$CHATCLUSTER_KUBE_BIN`, else `<cache>/kube-v1.36.3/bin`. Panics when missing.
pub fn kube_bin_dir() -> PathBuf {
    find_kube_bin_dir().unwrap_or_else(|err| panic!("{err}"))
}

/// [`kube_bin_dir`] returning the error instead of panicking.
pub fn kube_bin_dir_checked() -> Result<PathBuf, Error> {
    find_kube_bin_dir()
}

fn find_kube_bin_dir() -> Result<PathBuf, Error> {
    let mut looked = Vec::new();
    if let Some(dir) = std::env::var_os("CHATCLUSTER_KUBE_BIN") {
        let dir = PathBuf::from(dir);
        if is_executable(&dir.join("kube-apiserver")) {
            return Ok(dir);
        }
        looked.push(format!("$CHATCLUSTER_KUBE_BIN={}", dir.display()));
    }
    let dir = cache_dir().join(format!("kube-{KUBE_VERSION}/bin"));
    if is_executable(&dir.join("kube-apiserver")) {
        return Ok(dir);
    }
    looked.push(dir.display().to_string());
    Err(Error::ToolMissing {
        tool: format!("Kubernetes {KUBE_VERSION} control plane (kube-apiserver, etcd, kubectl)"),
        looked: looked.join(", "),
    })
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn expect(tool: Tool) -> PathBuf {
    find(tool).unwrap_or_else(|err| panic!("test harness: {err}"))
}

/// kubectl of the control plane's release (never an older one from `PATH`).
pub fn kubectl() -> PathBuf {
    expect(Tool::Kubectl)
}

/// Helm 3, built from Go modules by hack/setup.d/30-helm.sh.
pub fn helm() -> PathBuf {
    expect(Tool::Helm)
}

/// Helm 4 (server-side apply, kstatus waits), built from Go modules by hack/setup.d/30-helm.sh.
pub fn helm4() -> PathBuf {
    expect(Tool::Helm4)
}

/// The OpenTelemetry Collector built by hack/setup.d/31-otelcol.sh (supports `validate`).
pub fn otelcol() -> PathBuf {
    expect(Tool::Otelcol)
}

/// kstatus-check (tests/tools/kstatus, built by hack/setup.d/62-kstatus.sh): reads an object or
/// a List as JSON on stdin, prints one `{"name", "status", "message"}` line per object as the
/// kstatus library computes it.
pub fn kstatus_check() -> PathBuf {
    expect(Tool::KstatusCheck)
}

/// The custom metrics adapter (tests/tools/metrics-adapter, built by
/// hack/setup.d/64-metrics-adapter.sh): serves per-pod metrics from Prometheus as
/// `custom.metrics.k8s.io`, as prometheus-adapter does with the rule docs/autoscaling.md shows.
pub fn metrics_adapter() -> PathBuf {
    expect(Tool::MetricsAdapter)
}

/// prometheus-operator, built from its Go module by hack/setup.d/63-prometheus-operator.sh.
pub fn prometheus_operator() -> PathBuf {
    expect(Tool::PrometheusOperator)
}

/// promtool (Debian package `prometheus`).
pub fn promtool() -> PathBuf {
    expect(Tool::Promtool)
}

/// amtool (Debian package `prometheus-alertmanager`).
pub fn amtool() -> PathBuf {
    expect(Tool::Amtool)
}

/// The Prometheus server (Debian package `prometheus`).
pub fn prometheus() -> PathBuf {
    expect(Tool::Prometheus)
}

/// grpcurl, built from Go modules by hack/setup.d/32-grpcurl.sh.
pub fn grpcurl() -> PathBuf {
    expect(Tool::Grpcurl)
}

/// The Alertmanager server (Debian package `prometheus-alertmanager`).
pub fn alertmanager() -> PathBuf {
    expect(Tool::Alertmanager)
}
