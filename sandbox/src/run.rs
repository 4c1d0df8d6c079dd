//! The sandbox's steps, in order: the real node, the operator by its Helm chart, the example, a
//! wait until the demo page answers through Traefik; then the way back down on Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::helm::Helm;
use test_harness::kubectl::Kubectl;
use test_harness::node::{Cluster, ClusterOptions};
use tracing::info;

/// The Helm release and namespace of the operator (as in the README quickstart).
pub const RELEASE: &str = "chat-operator";
/// How long the operator and the example may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of one sandbox run (from the command line, see `main.rs`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// the ChatCluster manifest to apply
    pub example: PathBuf,
    /// loopback port of Traefik; 0 = a free one
    pub port: u16,
    /// state directory (kubeconfig, logs); wiped at start
    pub dir: PathBuf,
    /// written as JSON once the demo page answers through Traefik and a ChatCluster is Ready
    pub ready_file: Option<PathBuf>,
    /// the operator's Helm chart
    pub chart: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("failed to start the real node: {0}")]
    Node(String),
    #[error("failed to {step}: {detail}")]
    Step { step: &'static str, detail: String },
    #[error("{0}")]
    NotReady(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

fn step(step: &'static str) -> impl FnOnce(test_harness::kubectl::KubectlError) -> SandboxError {
    move |e| SandboxError::Step {
        step,
        detail: e.to_string(),
    }
}

/// A ChatCluster that is Ready, with where to reach it.
#[derive(Debug, Clone)]
struct ReadyCluster {
    name: String,
    endpoint: String,
    page: Option<String>,
}

/// Runs the sandbox until `shutdown` resolves (Ctrl-C / SIGTERM in `main`).
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SandboxError> {
    let dir = prepare_dir(&settings.dir)?;
    info!(
        "starting the real node: control plane, containerd, kubelet, kube-proxy, CoreDNS, Traefik on 127.0.0.1:{}",
        settings.port
    );
    let cluster = Cluster::start(ClusterOptions {
        ingress_port: settings.port,
    })
    .await
    .map_err(|e| SandboxError::Node(e.to_string()))?;
    let outcome = serve(&cluster, &settings, &dir, shutdown).await;
    info!("stopping: tearing the node down (containers, mounts, bridge, iptables)");
    cluster.stop();
    if let Some(file) = &settings.ready_file {
        let _ = std::fs::remove_file(file);
    }
    info!("stopped; the host is as it was");
    outcome
}

async fn serve(
    cluster: &Cluster,
    settings: &Settings,
    dir: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SandboxError> {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(cluster.control_plane().kubeconfig_path(), &kubeconfig)
        .map_err(io("copy the kubeconfig"))?;
    let kubectl = Kubectl::new(&kubeconfig);

    info!(
        "installing the operator with its Helm chart ({})",
        settings.chart.display()
    );
    let helm = Helm::with_kubeconfig(&kubeconfig).map_err(|e| SandboxError::Step {
        step: "prepare helm",
        detail: e.to_string(),
    })?;
    helm.run([
        "install".as_ref(),
        RELEASE.as_ref(),
        settings.chart.as_os_str(),
        "--namespace".as_ref(),
        RELEASE.as_ref(),
        "--create-namespace".as_ref(),
    ])
    .map_err(|e| SandboxError::Step {
        step: "helm install the operator",
        detail: e.to_string(),
    })?;
    wait_for(cluster, "the operator's pods to be ready", || {
        let deployment = kubectl
            .json(["get", "deployment", RELEASE, "-n", RELEASE])
            .ok()?;
        let ready = deployment["status"]["readyReplicas"].as_i64()?;
        (Some(ready) == deployment["spec"]["replicas"].as_i64()).then_some(())
    })
    .await?;

    info!("applying {}", settings.example.display());
    kubectl
        .run([
            "apply".as_ref(),
            "-f".as_ref(),
            settings.example.as_os_str(),
        ])
        .map_err(step("apply the example"))?;
    let ingress = cluster.ingress_addr();
    let ready = wait_for(
        cluster,
        "a ChatCluster to be Ready and its page to answer",
        || {
            let ready = ready_clusters(&kubectl, ingress.port());
            let answering: Vec<ReadyCluster> = ready
                .into_iter()
                .filter(|c| c.page.as_deref().is_none_or(page_answers))
                .collect();
            (!answering.is_empty()).then_some(answering)
        },
    )
    .await?;
    announce(
        &ready,
        &kubeconfig,
        &test_harness::tools::kubectl(),
        &cluster.log_dir(),
    );
    if let Some(file) = &settings.ready_file {
        write_ready_file(file, &ready[0], &kubeconfig, dir)?;
    }

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        cluster
            .ensure_running()
            .map_err(|e| SandboxError::Node(e.to_string()))?;
    }
}

/// Polls `check` every 500 ms (failing when a node process dies) until it returns `Some`.
async fn wait_for<T>(
    cluster: &Cluster,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, SandboxError> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        cluster
            .ensure_running()
            .map_err(|e| SandboxError::Node(e.to_string()))?;
        if start.elapsed() > READY_TIMEOUT {
            return Err(SandboxError::NotReady(format!(
                "timed out after {READY_TIMEOUT:?} waiting for {what}; see `kubectl get events -A` with the KUBECONFIG in the state directory"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Ready ChatClusters and where their demo page is: `http://<host>[:port]/` when the
/// endpoint goes through the ingress, none when it is in-cluster only.
fn ready_clusters(kubectl: &Kubectl, ingress_port: u16) -> Vec<ReadyCluster> {
    let Ok(list) = kubectl.json(["get", "chatclusters", "--all-namespaces"]) else {
        return Vec::new();
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| is_ready(c))
        .map(|c| {
            let endpoint = c["status"]["endpoint"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            ReadyCluster {
                name: format!(
                    "{}/{}",
                    c["metadata"]["namespace"].as_str().unwrap_or_default(),
                    c["metadata"]["name"].as_str().unwrap_or_default()
                ),
                page: page_of(&endpoint, ingress_port),
                endpoint,
            }
        })
        .collect()
}

fn is_ready(chat: &Value) -> bool {
    chat["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// `ws://127.0.0.1/ws` -> `http://127.0.0.1[:<port>]/`; an in-cluster endpoint has no page here.
fn page_of(endpoint: &str, ingress_port: u16) -> Option<String> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let authority = rest.split('/').next()?;
    if authority.ends_with(".svc") || authority.contains(".svc:") {
        return None;
    }
    let scheme = if scheme == "wss" { "https" } else { "http" };
    let authority = if authority == "127.0.0.1" && ingress_port != 80 {
        format!("127.0.0.1:{ingress_port}")
    } else {
        authority.to_owned()
    };
    Some(format!("{scheme}://{authority}/"))
}

/// True when `GET <url>` is answered 200 (a page on 127.0.0.1 only; other hosts are assumed
/// to be names the user maps themselves).
fn page_answers(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(authority) = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
    else {
        return true;
    };
    if !authority.starts_with("127.0.0.1") {
        return true;
    }
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    stream.read(&mut head).is_ok_and(|n| {
        head[..n].starts_with(b"HTTP/1.1 200") || head[..n].starts_with(b"HTTP/1.0 200")
    })
}

fn prepare_dir(dir: &Path) -> Result<PathBuf, SandboxError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(format!("clear {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    std::fs::canonicalize(dir).map_err(io(format!("resolve {}", dir.display())))
}

fn announce(ready: &[ReadyCluster], kubeconfig: &Path, kubectl: &Path, logs: &Path) {
    let kubectl_dir = kubectl
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let mut text = String::new();
    for cluster in ready {
        text.push_str(&format!("\n  ChatCluster {} is Ready.\n\n", cluster.name));
        if let Some(page) = &cluster.page {
            text.push_str(&format!("  Demo page:   {page}\n"));
        }
        text.push_str(&format!("  Endpoint:    {}\n", cluster.endpoint));
    }
    println!(
        "{text}  KUBECONFIG:  export KUBECONFIG={}\n  \
         kubectl:     export PATH={kubectl_dir}:$PATH   (kubectl of the cluster's release)\n\n  \
         Try:  kubectl get chat,pods -o wide\n        kubectl scale chat/demo --replicas=3\n        \
         kubectl delete pod -l app.kubernetes.io/name=chat-node   (pages move to the new pods)\n        \
         kubectl delete chat/demo\n\n  Node logs under {}. Ctrl-C stops everything.\n",
        kubeconfig.display(),
        logs.display(),
    );
}

fn write_ready_file(
    file: &Path,
    cluster: &ReadyCluster,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<(), SandboxError> {
    let body = serde_json::json!({
        "name": cluster.name,
        "url": cluster.page,
        "endpoint": cluster.endpoint,
        "kubeconfig": kubeconfig,
        "dir": dir,
        "pid": std::process::id(),
    });
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, body.to_string()).map_err(io("write the ready file"))?;
    std::fs::rename(&tmp, file).map_err(io("write the ready file"))
}

#[cfg(test)]
mod tests {
    use super::page_of;

    #[test]
    fn the_page_follows_the_endpoint_and_the_ingress_port() {
        assert_eq!(
            page_of("ws://127.0.0.1/ws", 80).as_deref(),
            Some("http://127.0.0.1/")
        );
        assert_eq!(
            page_of("ws://127.0.0.1/ws", 8080).as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        assert_eq!(
            page_of("wss://chat.example.com/ws", 80).as_deref(),
            Some("https://chat.example.com/")
        );
        assert_eq!(page_of("ws://demo.default.svc:8080/ws", 80), None);
    }
}
