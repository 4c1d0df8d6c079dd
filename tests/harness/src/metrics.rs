//! Per-pod custom metrics on the real node, for the HorizontalPodAutoscaler: what a platform
//! with Prometheus and prometheus-adapter has, made of real parts.
//!
//! - A real Prometheus scrapes each pod of one namespace on its port named `port_name` and
//!   labels the series with `namespace` and `pod`, as the operator's ServiceMonitor does. Debian's
//!   Prometheus is built without Kubernetes service discovery, so the harness does that part: it
//!   lists the pods every half second and writes their targets to a `file_sd_configs` file, which
//!   Prometheus watches (what `kubernetes_sd_configs` with role `pod` would find).
//! - The metrics adapter (`tests/tools/metrics-adapter`, on sigs.k8s.io/custom-metrics-apiserver)
//!   runs beside the node on the bridge address and answers `custom.metrics.k8s.io/v1beta2` with
//!   the prometheus-adapter rule docs/autoscaling.md documents.
//! - It is registered the way a cluster registers any aggregated API: a Service with an
//!   Endpoints object pointing at the adapter and the APIService `v1beta2.custom.metrics.k8s.io`
//!   (the control plane routes to endpoints, see `kube::aggregation_layer`).
//!
//! Dropping it deletes the APIService first (an unavailable aggregated API would break
//! discovery, and so namespace deletion, for every other test on the node), then stops the
//! processes.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use crate::Error;
use crate::kube::ControlPlane;
use crate::kubectl::{Kubectl, KubectlError};
use crate::process::ManagedProcess;
use crate::prometheus::{PrometheusOptions, PrometheusServer};

/// The APIService the adapter is registered as.
pub const API_SERVICE: &str = "v1beta2.custom.metrics.k8s.io";
const SERVICE: &str = "chatcluster-metrics-adapter";
const SERVICE_NAMESPACE: &str = "kube-system";

/// Prometheus plus the adapter, registered with the API server; unregistered and stopped on drop.
#[derive(Debug)]
pub struct PodMetrics {
    discovery: tokio::task::JoinHandle<()>,
    prometheus: PrometheusServer,
    adapter: ManagedProcess,
    kubectl: Kubectl,
    _dir: tempfile::TempDir,
}

fn kubectl_error(err: KubectlError) -> Error {
    Error::Other(err.to_string())
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_owned(),
        source,
    }
}

impl PodMetrics {
    /// Serves `metric` of the pods in `namespace` (scraped from their port `port_name` at
    /// `/metrics`) as a per-pod custom metric; `address` is where the adapter listens (an
    /// address of this host the API server may route to: not loopback, which Endpoints refuse).
    pub async fn start(
        cp: &ControlPlane,
        address: Ipv4Addr,
        namespace: &str,
        port_name: &str,
        metric: &str,
    ) -> Result<Self, Error> {
        let kubeconfig = cp.kubeconfig_path().display().to_string();
        let dir = tempfile::Builder::new()
            .prefix("metrics-adapter-")
            .tempdir()
            .map_err(io("create the metrics adapter's dir"))?;
        let targets = dir.path().join("pods.json");
        let discovery = PodDiscovery {
            pods: Api::namespaced(cp.client(), namespace),
            port_name: port_name.to_owned(),
            file: targets.clone(),
        };
        discovery.write_once().await?;
        let prometheus = PrometheusServer::start(PrometheusOptions {
            scrape_configs: vec![json!({
                "job_name": "pods",
                "file_sd_configs": [{"files": [targets], "refresh_interval": "1s"}],
            })],
            ..PrometheusOptions::default()
        })
        .await?;

        let port = crate::free_port_on(address);
        let mut command = std::process::Command::new(crate::tools::metrics_adapter());
        command
            .arg(format!("--secure-port={port}"))
            .arg(format!("--bind-address={address}"))
            .arg(format!("--cert-dir={}", dir.path().join("certs").display()))
            .arg(format!("--lister-kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg(format!("--prometheus-url={}", prometheus.url()))
            .arg(format!("--metric={metric}"))
            .arg("--v=2");
        let adapter = ManagedProcess::spawn(
            "metrics-adapter",
            command,
            &dir.path().join("metrics-adapter.log"),
        )?;
        let mut metrics = PodMetrics {
            // Spawned only now: dropping `PodMetrics` aborts it.
            discovery: tokio::spawn(discovery.run()),
            prometheus,
            adapter,
            kubectl: Kubectl::new(cp.kubeconfig_path()),
            _dir: dir,
        };
        let registration = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": SERVICE, "namespace": SERVICE_NAMESPACE},
             "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}},
            {"apiVersion": "v1", "kind": "Endpoints",
             "metadata": {"name": SERVICE, "namespace": SERVICE_NAMESPACE},
             "subsets": [{"addresses": [{"ip": address.to_string()}],
                          "ports": [{"name": "https", "port": port}]}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": API_SERVICE},
             "spec": {"group": "custom.metrics.k8s.io", "version": "v1beta2",
                      "service": {"name": SERVICE, "namespace": SERVICE_NAMESPACE, "port": 443},
                      // The adapter's certificate is self-signed (--cert-dir), as in most installs.
                      "insecureSkipTLSVerify": true,
                      "groupPriorityMinimum": 100, "versionPriority": 200}},
        ]});
        metrics
            .kubectl
            .run_with_stdin(["apply", "-f", "-"], Some(&registration.to_string()))
            .map_err(kubectl_error)?;
        metrics.wait_available(Duration::from_secs(60)).await?;
        Ok(metrics)
    }

    /// The Prometheus that scrapes the pods.
    pub fn prometheus(&self) -> &PrometheusServer {
        &self.prometheus
    }

    /// The adapter's log so far (for failure messages).
    pub fn adapter_log_tail(&self, lines: usize) -> String {
        self.adapter.log_tail(lines)
    }

    /// `kubectl get --raw <path>` through the API server (and so through the aggregation layer).
    pub fn get_raw(&self, path: &str) -> Result<String, Error> {
        self.kubectl
            .run(["get", "--raw", path])
            .map_err(kubectl_error)
    }

    async fn wait_available(&mut self, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            self.adapter.ensure_running()?;
            match self.kubectl.run([
                "get",
                "apiservice",
                API_SERVICE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status} {.status.conditions[?(@.type==\"Available\")].message}",
            ]) {
                Ok(status) if status.starts_with("True") => return Ok(()),
                Ok(status) => last = status,
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::NotReady {
            what: format!(
                "APIService {API_SERVICE} (adapter log: {})",
                self.adapter.log_tail(20)
            ),
            waited: timeout,
            last_error: last,
        })
    }
}

impl Drop for PodMetrics {
    fn drop(&mut self) {
        let _ = self.kubectl.run([
            "delete",
            "--ignore-not-found",
            "--wait=false",
            &format!("apiservice/{API_SERVICE}"),
        ]);
        let _ = self.kubectl.run([
            "delete",
            "--ignore-not-found",
            "-n",
            SERVICE_NAMESPACE,
            &format!("service/{SERVICE}"),
            &format!("endpoints/{SERVICE}"),
        ]);
        self.adapter.kill();
        self.discovery.abort();
    }
}

/// The harness' pod discovery for Prometheus: the namespace's running pods with a port named
/// `port_name`, as file_sd targets labelled `namespace` and `pod`.
struct PodDiscovery {
    pods: Api<Pod>,
    port_name: String,
    file: PathBuf,
}

impl PodDiscovery {
    async fn targets(&self) -> Result<Value, Error> {
        let pods = self
            .pods
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::Other(format!("list pods: {e}")))?;
        let groups: Vec<Value> = pods
            .items
            .iter()
            .filter_map(|pod| {
                let status = pod.status.as_ref()?;
                if status.phase.as_deref() != Some("Running") {
                    return None;
                }
                let ip = status.pod_ip.as_ref()?;
                let port = pod
                    .spec
                    .as_ref()?
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| p.name.as_deref() == Some(self.port_name.as_str()))?
                    .container_port;
                Some(json!({
                    "targets": [format!("{ip}:{port}")],
                    "labels": {
                        "namespace": pod.metadata.namespace,
                        "pod": pod.metadata.name,
                    },
                }))
            })
            .collect();
        Ok(Value::Array(groups))
    }

    /// Writes `targets` (atomically: Prometheus never reads half a file).
    fn write(&self, targets: &Value) -> Result<(), Error> {
        let partial = self.file.with_extension("json.tmp");
        std::fs::write(&partial, targets.to_string()).map_err(io("write the targets file"))?;
        std::fs::rename(&partial, &self.file).map_err(io("rename the targets file"))
    }

    /// The targets now, written.
    async fn write_once(&self) -> Result<Value, Error> {
        let targets = self.targets().await?;
        self.write(&targets)?;
        Ok(targets)
    }

    /// Rewrites the file whenever the targets change, until aborted.
    async fn run(self) {
        let mut written = Value::Null;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(targets) = self.targets().await
                && targets != written
                && self.write(&targets).is_ok()
            {
                written = targets;
            }
        }
    }
}
