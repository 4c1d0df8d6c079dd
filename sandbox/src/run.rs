//! The sandbox's steps, in order: control plane, CRD, operator, example, node loop; and the
//! way back down on Ctrl-C.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use test_harness::process::ManagedProcess;
use tracing::{info, warn};

use crate::kubelet::Kubelet;
use crate::pod_command::Programs;
use crate::proxy::Nginx;

/// Settings of one sandbox run (from the command line, see `main.rs`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// the ChatCluster manifest to apply
    pub example: PathBuf,
    /// loopback port of the proxy (the demo page); 0 = a free one
    pub port: u16,
    /// state directory (logs, pod directories, kubeconfig copy); wiped at start
    pub dir: PathBuf,
    /// written as JSON once the demo answers through the proxy and the ChatCluster is Ready
    pub ready_file: Option<PathBuf>,
    pub chat_node_bin: PathBuf,
    pub operator_bin: PathBuf,
    pub redis_server_bin: PathBuf,
    pub nginx_bin: PathBuf,
    pub sync_interval: Duration,
    /// longest wait for a chat-node to drain when the sandbox stops
    pub stop_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0} not found or not executable: {1}")]
    MissingBinary(&'static str, PathBuf),
    #[error("failed to start the control plane: {0}")]
    ControlPlane(String),
    #[error("failed to {step}: {detail}")]
    Step { step: &'static str, detail: String },
    #[error("the operator exited: {0}")]
    OperatorExited(String),
    #[error(transparent)]
    Kubelet(#[from] crate::kubelet::KubeletError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
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

/// Runs the sandbox until `shutdown` resolves (Ctrl-C / SIGTERM in `main`).
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SandboxError> {
    for (what, path) in [
        ("chat-node", &settings.chat_node_bin),
        ("chat-operator", &settings.operator_bin),
        ("redis-server", &settings.redis_server_bin),
        ("nginx", &settings.nginx_bin),
    ] {
        if which(path).is_none() {
            return Err(SandboxError::MissingBinary(what, path.clone()));
        }
    }
    let dir = prepare_dir(&settings.dir)?;

    info!("starting the control plane (etcd, kube-apiserver, controllers)");
    // no kube-scheduler: this node binds the operator's pods itself (one node, nothing to choose)
    let control_plane =
        test_harness::kube::ControlPlane::start(test_harness::kube::ControlPlaneOptions::default())
            .await
            .map_err(|e| SandboxError::ControlPlane(e.to_string()))?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(control_plane.kubeconfig_path(), &kubeconfig)
        .map_err(io("copy the kubeconfig"))?;
    let client = control_plane.client();
    let kubectl =
        |args: &[&str], stdin: Option<&[u8]>| run_kubectl(&control_plane.kubectl(), args, stdin);

    info!("installing the ChatCluster CRD");
    let crd = Command::new(&settings.operator_bin)
        .arg("crd")
        .output()
        .map_err(io("run `chat-operator crd`"))?;
    if !crd.status.success() {
        return Err(step("print the CRD", &crd.stderr));
    }
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&crd.stdout))?;
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "crd/chatclusters.realtime.dev",
            "--timeout=60s",
        ],
        None,
    )?;

    info!(
        "starting chat-operator (log: {})",
        dir.join("operator.log").display()
    );
    let mut operator = start_operator(&settings.operator_bin, &kubeconfig, &dir)?;

    let proxy_port = if settings.port == 0 {
        test_harness::free_port()
    } else {
        settings.port
    };
    let nginx = Nginx::start(&settings.nginx_bin, &dir.join("proxy"), proxy_port)?;
    let programs = Programs {
        chat_node: settings.chat_node_bin.clone(),
        redis_server: settings.redis_server_bin.clone(),
    };
    let mut kubelet = Kubelet::start(client.clone(), programs, &dir, nginx).await?;

    info!("applying {}", settings.example.display());
    let example = settings.example.display().to_string();
    kubectl(&["apply", "-f", &example], None)?;

    let url = format!("http://127.0.0.1:{proxy_port}/");
    let mut announced = false;
    let mut ticker = tokio::time::interval(settings.sync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            _ = ticker.tick() => {}
        }
        if let Err(e) = operator.ensure_running() {
            break Err(SandboxError::OperatorExited(e.to_string()));
        }
        if let Err(e) = kubelet.sync().await {
            warn!("node sync: {e}");
        }
        if !announced && !kubelet.ready_pods().is_empty() && proxy_answers(proxy_port).await {
            let ready = chat_clusters_ready(&client).await;
            if !ready.is_empty() {
                announce(&url, &kubeconfig, &test_harness::tools::kubectl(), &ready);
                if let Some(file) = &settings.ready_file {
                    write_ready_file(file, &url, &kubeconfig, &dir)?;
                }
                announced = true;
            }
        }
    };

    info!("stopping: chat-nodes drain, then the operator and the control plane stop");
    kubelet.shutdown(settings.stop_grace).await;
    operator.stop(Duration::from_secs(5));
    drop(control_plane);
    if let Some(file) = &settings.ready_file {
        let _ = std::fs::remove_file(file);
    }
    outcome
}

fn step(step: &'static str, stderr: &[u8]) -> SandboxError {
    SandboxError::Step {
        step,
        detail: String::from_utf8_lossy(stderr).trim().to_string(),
    }
}

fn prepare_dir(dir: &Path) -> Result<PathBuf, SandboxError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(format!("clear {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    std::fs::canonicalize(dir).map_err(io(format!("resolve {}", dir.display())))
}

fn which(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(path))
        .find(|p| p.is_file())
}

fn run_kubectl(base: &Command, args: &[&str], stdin: Option<&[u8]>) -> Result<(), SandboxError> {
    let mut cmd = Command::new(base.get_program());
    cmd.args(base.get_args());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(io("run kubectl"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(io("write to kubectl"))?;
    }
    let out = child.wait_with_output().map_err(io("wait for kubectl"))?;
    if !out.status.success() {
        return Err(SandboxError::Step {
            step: "run kubectl",
            detail: format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn start_operator(
    bin: &Path,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<ManagedProcess, SandboxError> {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .env("KUBECONFIG", kubeconfig)
        .env("CHAT_OPERATOR_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CHAT_OPERATOR_LEADER_ELECTION", "off")
        .env("CHAT_OPERATOR_LOG_FORMAT", "text")
        .env(
            "RUST_LOG",
            std::env::var("CHAT_OPERATOR_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    ManagedProcess::spawn("chat-operator", cmd, &dir.join("operator.log"))
        .map_err(|e| SandboxError::OperatorExited(e.to_string()))
}

/// Names of the ChatClusters whose `Ready` condition is `True`.
async fn chat_clusters_ready(client: &Client) -> Vec<String> {
    let gvk = GroupVersionKind::gvk("realtime.dev", "v1alpha1", "ChatCluster");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "chatclusters");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let Ok(list) = api.list(&Default::default()).await else {
        return Vec::new();
    };
    list.items
        .iter()
        .filter(|o| {
            o.data["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .filter_map(|o| {
            Some(format!(
                "{}/{}",
                o.metadata.namespace.clone()?,
                o.metadata.name.clone()?
            ))
        })
        .collect()
}

async fn proxy_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /readyz-through-proxy HTTP/1.0\r\nHost: sandbox\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    let Ok(Some(head)) = tokio::time::timeout(Duration::from_secs(2), attempt).await else {
        return false;
    };
    // any answer from a chat-node (its 404 for an unknown path) proves the route works;
    // nginx's own 502/503 does not
    head.split_whitespace()
        .nth(1)
        .is_some_and(|c| c != "502" && c != "503" && c != "504")
}

fn announce(url: &str, kubeconfig: &Path, kubectl: &Path, ready: &[String]) {
    let kc = kubeconfig.display();
    let kubectl_dir = kubectl
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    println!(
        "\n  ChatCluster {} is Ready.\n\n  Demo page:   {url}\n  KUBECONFIG:  export KUBECONFIG={kc}\n  \
         kubectl:     export PATH={kubectl_dir}:$PATH   (kubectl of the control plane's release)\n\n  \
         Try:  kubectl get chat,deploy,pods,svc,ingress\n        kubectl scale chat/demo --replicas=3\n        \
         kubectl delete chat/demo\n\n  Logs under {}. Ctrl-C stops everything.\n",
        ready.join(", "),
        kubeconfig
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    );
}

fn write_ready_file(
    file: &Path,
    url: &str,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<(), SandboxError> {
    let body = serde_json::json!({
        "url": url,
        "kubeconfig": kubeconfig,
        "dir": dir,
        "pid": std::process::id(),
    });
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, body.to_string()).map_err(io("write the ready file"))?;
    std::fs::rename(&tmp, file).map_err(io("write the ready file"))
}
