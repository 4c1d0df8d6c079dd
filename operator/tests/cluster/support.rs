//! Shared helpers: control plane with CRD + ClusterRole installed, operator per namespace,
//! waiting; the real node's control plane for the tests whose pods must run.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_operator::cli::{Cli, Command};
use chat_operator::metrics::Metrics;
use chat_operator::run::Running;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use test_harness::kube::{ControlPlane, Impersonation};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// Name of the operator's ServiceAccount in each test namespace.
pub const OPERATOR_SA: &str = "chat-operator";

/// The repository root.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

static INSTALLED: OnceCell<()> = OnceCell::const_new();
static NODE_INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Installs the generated CRD and the operator's ClusterRole.
async fn install(cp: &ControlPlane) {
    cp.install_crds(&[repo("crds")]).await;
    kubectl_ok(
        cp,
        &[
            "apply",
            "--server-side",
            "-f",
            repo("config/rbac/clusterrole.yaml").to_str().unwrap(),
        ],
    );
}

/// The shared API-only control plane (no kubelet: pods are created, never run), with the
/// generated CRD and ClusterRole installed (once).
pub async fn control_plane() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await;
    INSTALLED.get_or_init(|| install(cp)).await;
    cp
}

/// The control plane of the real node (kubelet, containerd, the repository's images: pods
/// really run and turn Ready through their own probes), with the CRD and ClusterRole installed
/// (once). The node is one per machine: this waits while another test process holds it.
pub async fn node_control_plane() -> &'static ControlPlane {
    let cp = test_harness::node::Cluster::shared().await.control_plane();
    NODE_INSTALLED.get_or_init(|| install(cp)).await;
    cp
}

/// Runs kubectl; returns (success, stdout, stderr).
pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    let out = cp.kubectl().args(args).output().expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl and panics with its stderr when it fails; returns stdout.
pub fn kubectl_ok(cp: &ControlPlane, args: &[&str]) -> String {
    let (ok, stdout, stderr) = kubectl(cp, args);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}

/// Runs kubectl with `stdin` as the manifest (`-f -` must be in `args`).
pub fn kubectl_stdin(cp: &ControlPlane, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = cp
        .kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates the operator's ServiceAccount in `ns` and binds the generated ClusterRole to it there.
pub async fn grant_operator_rbac(client: &Client, ns: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(OPERATOR_SA.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    bind_operator_rules(client, ns, ns).await;
}

/// Binds the generated ClusterRole in `ns` to the operator's ServiceAccount of `sa_namespace`.
pub async fn bind_operator_rules(client: &Client, ns: &str, sa_namespace: &str) {
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(OPERATOR_SA.into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: chat_operator::rbac::CLUSTER_ROLE_NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: OPERATOR_SA.into(),
            namespace: Some(sa_namespace.into()),
            api_group: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding");
}

/// An operator running in this process for one namespace; stops when dropped (also on panic).
pub struct Operator {
    running: Option<Running>,
    shutdown: CancellationToken,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
}

impl Operator {
    /// Reconcile runs so far.
    pub fn runs(&self) -> u64 {
        self.metrics.reconcile_runs.get()
    }

    /// Waits until at least `n` more reconciles have run (the resync is 1 s in tests).
    pub async fn wait_for_more_runs(&self, n: u64) {
        let target = self.runs() + n;
        wait_for(&format!("{n} more reconciles"), || async {
            (self.runs() >= target).then_some(())
        })
        .await;
    }

    /// Stops it and waits.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("operator stops cleanly");
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Parses `chat-operator run` flags as the binary would.
pub fn run_args(extra: &[&str]) -> chat_operator::cli::RunArgs {
    use clap::Parser;
    let mut argv = vec!["chat-operator", "run"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(&argv).expect("valid flags").command {
        Command::Run(args) => args,
        other => panic!("not a run command: {other:?}"),
    }
}

/// Starts an operator for `ns` as its ServiceAccount: no leader election, 1 s resync, fast backoff.
pub async fn start_operator(cp: &ControlPlane, ns: &str) -> Operator {
    start_operator_with(cp, ns, &[]).await
}

/// [`start_operator`] with `extra` flags (e.g. `--default-node-image`); a flag given in `extra`
/// replaces the default above (e.g. `--resync-interval 1h`).
pub async fn start_operator_with(cp: &ControlPlane, ns: &str, extra: &[&str]) -> Operator {
    let client = cp.client_as(&Impersonation::service_account(ns, OPERATOR_SA));
    let defaults = [
        ("--admin-listen", "127.0.0.1:0"),
        ("--leader-election", "off"),
        ("--namespace", ns),
        ("--resync-interval", "1s"),
        ("--backoff-base", "200ms"),
        ("--backoff-max", "2s"),
        ("--api-timeout", "10s"),
    ];
    let mut flags: Vec<&str> = defaults
        .iter()
        .filter(|(flag, _)| !extra.contains(flag))
        .flat_map(|(flag, value)| [*flag, *value])
        .collect();
    flags.extend_from_slice(extra);
    let args = run_args(&flags);
    let shutdown = CancellationToken::new();
    let running = chat_operator::run::start(args, client, shutdown.clone())
        .await
        .expect("operator starts");
    let metrics = running.metrics.clone();
    Operator {
        running: Some(running),
        shutdown,
        metrics,
    }
}

/// How long a `wait_for` waits before failing.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` every 100 ms until it returns `Some`, or panics after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `name` of kind `K` exists in `ns` and returns it.
pub async fn wait_for_object<K>(client: &Client, ns: &str, name: &str) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{} {name}", K::kind(&())), || async {
        api.get_opt(name).await.ok().flatten()
    })
    .await
}

/// Waits until `name` of kind `K` is gone from `ns`.
pub async fn wait_for_absence<K>(client: &Client, ns: &str, name: &str)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{} {name} to be gone", K::kind(&())), || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await
}

/// The chat-node server API (port 9092) of one node pod, keyed with its ChatCluster's
/// generated key (the Secret `<cluster>-api-key`): how tests on the real node publish and read
/// history from the host.
pub struct ServerApi {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl ServerApi {
    /// The API of the node pod at `pod_ip`, with the key of ChatCluster `cluster` in `ns`.
    pub async fn of(client: &Client, ns: &str, cluster: &str, pod_ip: &str) -> Self {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
        let secret = secrets.get(&format!("{cluster}-api-key")).await.unwrap();
        let key = secret.data.unwrap()["api-key"].0.clone();
        ServerApi {
            http: reqwest::Client::new(),
            base: format!("http://{pod_ip}:9092"),
            key: String::from_utf8(key).unwrap(),
        }
    }

    /// One call; `None` on any failure (callers wait for success where one is expected).
    pub async fn call(&self, method: &str, body: serde_json::Value) -> Option<serde_json::Value> {
        let response = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .header("authorization", format!("apikey {}", self.key))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }

    /// The newest 100 messages of `channel`: its epoch and their offsets, oldest first.
    pub async fn history(&self, channel: &str) -> Option<(serde_json::Value, Vec<String>)> {
        let page = self
            .call(
                "history",
                serde_json::json!({"channel": channel, "limit": 100}),
            )
            .await?;
        let offsets = page["messages"]
            .as_array()?
            .iter()
            .map(|m| m["offset"].as_str().map(str::to_owned))
            .collect::<Option<_>>()?;
        Some((page["epoch"].clone(), offsets))
    }
}

/// The ready pods matching `selector`: (name, IP, uid).
pub async fn ready_pods(
    client: &Client,
    ns: &str,
    selector: &str,
) -> Vec<(String, String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else {
        return Vec::new();
    };
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                return None;
            }
            Some((p.name_any(), status.pod_ip.clone()?, p.uid()?))
        })
        .collect()
}
