//! What every test here shares: the real node, kubectl and Helm bound to it, and the operator
//! installed by the README's Helm command (so it runs as a pod, from its image, with the
//! chart's ServiceAccount and RBAC).

use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::helm::Helm;
use test_harness::kubectl::{Kubectl, TempNamespace};
use test_harness::node::Cluster;
use tokio::sync::{Mutex, MutexGuard, OnceCell};

/// The Helm release and namespace of the README quickstart.
pub const RELEASE: &str = "chat-operator";
pub const OPERATOR_NS: &str = "chat-operator";
/// How long a ChatCluster may take to become Ready (images are local; pods start in seconds).
pub const READY: Duration = Duration::from_secs(180);

/// The shared environment.
pub struct Env {
    pub cluster: &'static Cluster,
    pub kubectl: Kubectl,
    pub helm: Helm,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

/// The real node with the operator installed (once per test process) by the README's
/// `helm install` line.
pub async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let cluster = Cluster::shared().await;
        let kubeconfig = cluster.control_plane().kubeconfig_path();
        let env = Env {
            cluster,
            kubectl: Kubectl::new(kubeconfig),
            helm: Helm::with_kubeconfig(kubeconfig).expect("helm"),
        };
        let install = readme_quickstart()
            .into_iter()
            .find(|line| line[0] == "helm")
            .expect("the README quickstart installs the chart with helm");
        let started = Instant::now();
        env.run_readme_line(&install);
        env.wait_for_operator().await;
        eprintln!(
            "e2e: operator installed by helm and running as pods in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        env
    })
    .await
}

impl Env {
    /// Runs one line of the README's quickstart (helm or kubectl) from the repository root.
    pub fn run_readme_line(&self, line: &[String]) -> String {
        let (program, args) = line.split_first().expect("non-empty line");
        match program.as_str() {
            "helm" => {
                let output = self
                    .helm
                    .command()
                    .args(args)
                    .current_dir(test_harness::repo_root())
                    .output()
                    .expect("run helm");
                assert!(
                    output.status.success(),
                    "README step `{}` failed: {}",
                    line.join(" "),
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
            "kubectl" => self
                .kubectl
                .run(args)
                .unwrap_or_else(|e| panic!("README step `{}` failed: {e}", line.join(" "))),
            other => {
                panic!("the README quickstart runs {other:?}; the test knows helm and kubectl")
            }
        }
    }

    /// Both operator replicas Ready and one of them holding the Lease.
    async fn wait_for_operator(&self) {
        let deadline = Instant::now() + READY;
        loop {
            let deployment = self
                .kubectl
                .json(["get", "deployment", RELEASE, "-n", OPERATOR_NS])
                .ok();
            let ready = deployment
                .as_ref()
                .and_then(|d| d["status"]["readyReplicas"].as_i64())
                .unwrap_or(0);
            let wanted = deployment
                .as_ref()
                .and_then(|d| d["spec"]["replicas"].as_i64())
                .unwrap_or(1);
            if ready == wanted && self.lease_holder().is_some() {
                return;
            }
            if Instant::now() > deadline {
                let pods = self
                    .kubectl
                    .run(["describe", "pods", "-n", OPERATOR_NS])
                    .unwrap_or_default();
                let logs = self.operator_logs(30);
                panic!("the operator did not come up: {ready}/{wanted} ready\n{pods}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The identity holding the operator's leader-election Lease.
    pub fn lease_holder(&self) -> Option<String> {
        let leases = self
            .kubectl
            .json(["get", "leases", "-n", OPERATOR_NS])
            .ok()?;
        leases["items"]
            .as_array()?
            .iter()
            .find_map(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
            .filter(|h| !h.is_empty())
    }

    /// A fresh namespace, deleted when dropped.
    pub fn namespace(&self, prefix: &str) -> TempNamespace {
        TempNamespace::create(&self.kubectl, prefix).expect("create a namespace")
    }

    /// `kubectl apply -n <ns> -f -` of `manifest`.
    pub fn apply(&self, namespace: &str, manifest: &str) {
        self.kubectl
            .run_with_stdin(["apply", "-n", namespace, "-f", "-"], Some(manifest))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `kubectl get <what> -n <ns> -o json`.
    pub fn get(&self, namespace: &str, what: &[&str]) -> Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-n", namespace]);
        self.kubectl.json(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits for the ChatCluster's Ready condition; on timeout, panics with what the namespace
    /// holds and the operator's log.
    pub async fn wait_chat_ready(&self, namespace: &str, name: &str) -> Value {
        self.wait_chat(namespace, name, "Ready", "True").await
    }

    /// Waits until the ChatCluster is Ready, its rollout is over (Progressing False) and both
    /// conditions were computed for its current generation: after a spec change, Ready alone can
    /// still be True from the old pods while the new ones roll out.
    pub async fn wait_chat_settled(&self, namespace: &str, name: &str) -> Value {
        let what = "settled (Ready, not Progressing, current generation)";
        self.wait_chat_until(namespace, name, what, |chat| {
            let generation = &chat["metadata"]["generation"];
            let current = |type_: &str, status: &str| {
                condition(chat, type_).is_some_and(|c| {
                    c["status"] == status && &c["observedGeneration"] == generation
                })
            };
            &chat["status"]["observedGeneration"] == generation
                && current("Ready", "True")
                && current("Progressing", "False")
        })
        .await
    }

    /// Waits until the ChatCluster's condition `type_` has `status`.
    pub async fn wait_chat(&self, namespace: &str, name: &str, type_: &str, status: &str) -> Value {
        let what = format!("{type_}={status}");
        self.wait_chat_until(namespace, name, &what, |chat| {
            condition(chat, type_).is_some_and(|c| c["status"] == status)
        })
        .await
    }

    /// Polls the ChatCluster until `done` holds for it; past [`READY`] fails with its status
    /// and the namespace's diagnostics.
    async fn wait_chat_until(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + READY;
        loop {
            let chat = self
                .kubectl
                .json(["get", "chat", name, "-n", namespace])
                .ok();
            if let Some(chat) = &chat
                && done(chat)
            {
                return chat.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "ChatCluster {namespace}/{name} not {what} after {READY:?}: {}\n{}",
                    chat.map(|c| c["status"].to_string()).unwrap_or_default(),
                    self.diagnostics(namespace)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Pods, events and the operator's recent log, for failure messages.
    pub fn diagnostics(&self, namespace: &str) -> String {
        let pods = self
            .kubectl
            .run([
                "get",
                "pods,endpointslices,ingress",
                "-n",
                namespace,
                "-o",
                "wide",
            ])
            .unwrap_or_default();
        let events = self
            .kubectl
            .run(["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"])
            .unwrap_or_default();
        let operator = self.operator_logs(20);
        format!("--- pods\n{pods}\n--- events\n{events}\n--- operator\n{operator}")
    }

    /// The last `lines` lines of every operator pod's log, each line prefixed with its pod.
    fn operator_logs(&self, lines: u32) -> String {
        self.kubectl
            .run([
                "logs",
                "-n",
                OPERATOR_NS,
                "-l",
                "app.kubernetes.io/name=chat-operator",
                &format!("--tail={lines}"),
                "--prefix",
            ])
            .unwrap_or_default()
    }

    /// Deletes the ChatCluster and waits until its pods and Ingress are collected (so that a
    /// host-less Ingress is gone before the next test takes its turn).
    pub async fn delete_chat(&self, namespace: &str, name: &str) {
        self.kubectl
            .run(["delete", "chat", name, "-n", namespace, "--wait=true"])
            .unwrap_or_else(|e| panic!("{e}"));
        let selector = format!("app.kubernetes.io/instance={name}");
        eventually(
            Duration::from_secs(120),
            "the ChatCluster's children to be collected",
            || {
                let left = self.get(namespace, &["pods,ingress", "-l", &selector]);
                left["items"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
                    .then_some(())
            },
        )
        .await;
    }

    /// Names of the Ready chat-node pods of the ChatCluster `name`.
    pub fn chat_node_pods(
        &self,
        namespace: &str,
        name: &str,
    ) -> std::collections::BTreeSet<String> {
        let selector =
            format!("app.kubernetes.io/instance={name},app.kubernetes.io/name=chat-node");
        self.ready_pods(namespace, &selector).into_iter().collect()
    }

    /// Names of the Ready pods matching `selector`.
    pub fn ready_pods(&self, namespace: &str, selector: &str) -> Vec<String> {
        let pods = self.get(namespace, &["pods", "-l", selector]);
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| condition(p, "Ready").is_some_and(|c| c["status"] == "True"))
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }
}

/// A ChatCluster for a test: `replicas` chat-nodes with small requests (the node has 2 CPUs for
/// every test at once), a short drain, the managed Redis, and `ingress` (YAML of
/// `spec.ingress`, indented by 4, or empty; with an Ingress the cluster says `anonymous: true`,
/// as the API requires of a public cluster without `spec.auth`).
pub fn chat_cluster(name: &str, replicas: u32, ingress: &str) -> String {
    let ingress = if ingress.is_empty() {
        String::new()
    } else {
        format!("  anonymous: true\n  ingress:\n{ingress}")
    };
    format!(
        "apiVersion: realtime.dev/v1alpha1\nkind: ChatCluster\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  resources:\n    requests: {{cpu: 10m, memory: 32Mi}}\n    limits: {{memory: 256Mi}}\n  node:\n    drainTimeout: 4s\n{ingress}"
    )
}

/// The condition `type_` of an object's status.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The commands of the README's "Install with Helm" block, split into words.
pub fn readme_quickstart() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(test_harness::repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Install with Helm")
        .nth(1)
        .expect("README has an \"Install with Helm\" section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section starts with a ```sh block");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// ChatClusters whose Ingress has no host answer every host name, so only one at a time may
/// exist (Traefik would pick one of them at random).
static HOSTLESS: Mutex<()> = Mutex::const_new(());

/// Held while a test runs a ChatCluster with a host-less Ingress.
pub async fn hostless() -> MutexGuard<'static, ()> {
    HOSTLESS.lock().await
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
