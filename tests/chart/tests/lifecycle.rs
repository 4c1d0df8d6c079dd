//! The chart's whole life against the real control plane (kube-apiserver + etcd +
//! kube-controller-manager, v1.36), in one ordered scenario because its steps share cluster-scoped
//! objects (the CRD, the ClusterRole) and one Helm release:
//!
//! 1. the README quickstart, line by line: `helm install`, `kubectl apply -f examples/basic.yaml`,
//!    then — with the operator binary running outside the cluster, authenticated as the chart's
//!    ServiceAccount — `kubectl wait --for=condition=Ready chat/demo` and `kubectl get chat`;
//! 2. the Argo CD health check on the real ChatCluster while progressing and once Ready;
//! 3. no perpetual diff: server-side apply of the example again changes nothing;
//! 4. `helm uninstall`: operator gone, CRD and ChatClusters (and their chat nodes) stay;
//! 5. `helm upgrade` from the previous chart version, whose operator defaults to another
//!    chat-node image: CRD updated in place, ChatCluster kept, its chat-node pod template
//!    byte-for-byte unchanged; then the documented opt-in rolls it to the new image.
//!
//! (That the chart's ClusterRole is exactly enough is `rbac.rs`.)
//!
//! No kubelet runs here: pods never start. The operator runs as a local process, and the test
//! marks chat-node/Redis pods Ready through the status subresource (see `mark_pods_ready`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chart_tests::cluster::{
    Kubectl, OperatorProcess, TempNamespace, mark_pods_ready, service_account_kubeconfig, wait_for,
};
use chart_tests::helm::Helm;
use chart_tests::lua::{health_check_path, run_health_check};
use chart_tests::manifests::{one_of_kind, parse_documents};
use chart_tests::{chart_dir, repo_path};
use serde_json::Value;

const RELEASE: &str = "chat-operator";
const RELEASE_NS: &str = "chat-operator";
/// examples/basic.yaml has no namespace: `kubectl apply` puts it in `default`.
const EXAMPLE_NS: &str = "default";
const EXAMPLE: &str = "demo";
const DEMO_SELECTOR: &str = "app.kubernetes.io/instance=demo";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

struct Env {
    kubectl: Kubectl,
    helm: Helm,
    scratch: tempfile::TempDir,
}

impl Env {
    /// The operator as the release's Deployment runs it (its leader election, Lease and default
    /// chat-node image, read from the live Deployment, so each chart version runs its own
    /// settings), but as a local process authenticated as the chart's ServiceAccount, with short
    /// leases, watching only `watch`.
    fn start_operator(&self, identity: &str, watch: &str) -> OperatorProcess {
        let deployment = self
            .kubectl
            .json(["get", "deployment", RELEASE, "-n", RELEASE_NS])
            .unwrap_or_else(|e| panic!("the chart's operator Deployment: {e}"));
        let from_chart: Vec<(String, String)> =
            deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .expect("env")
                .iter()
                .filter(|e| {
                    [
                        "CHAT_OPERATOR_LEADER_ELECTION",
                        "CHAT_OPERATOR_LEASE_NAME",
                        "CHAT_OPERATOR_DEFAULT_NODE_IMAGE",
                    ]
                    .contains(&e["name"].as_str().unwrap_or_default())
                })
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_string(),
                        e["value"].as_str().expect("a literal value").to_string(),
                    )
                })
                .collect();
        let mut env: Vec<(&str, &str)> = from_chart
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([
            // What a pod gets from the downward API.
            ("CHAT_OPERATOR_LEASE_NAMESPACE", RELEASE_NS),
            ("CHAT_OPERATOR_IDENTITY", identity),
            ("CHAT_OPERATOR_LEASE_DURATION", "3s"),
            ("CHAT_OPERATOR_LEASE_RENEW_BEFORE", "1s"),
            ("CHAT_OPERATOR_NAMESPACE", watch),
        ]);
        let kubeconfig = service_account_kubeconfig(RELEASE_NS, RELEASE);
        OperatorProcess::start(&kubeconfig, &env).expect("operator starts")
    }

    fn chat(&self, namespace: &str, name: &str) -> Value {
        self.kubectl
            .json(["get", "chatcluster", name, "-n", namespace])
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

/// Keeps marking the example's pods Ready (as kubelets would) until dropped.
struct Kubelet<'scope> {
    stop: &'scope AtomicBool,
}

impl Drop for Kubelet<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn play_kubelet<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    stop: &'scope AtomicBool,
    kubectl: &'env Kubectl,
    namespace: &str,
    selector: &'env str,
) -> Kubelet<'scope> {
    stop.store(false, Ordering::SeqCst);
    let namespace = namespace.to_string();
    scope.spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let _ = mark_pods_ready(kubectl, &namespace, selector);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    Kubelet { stop }
}

/// The commands of the README's "Install with Helm" block.
fn readme_quickstart() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
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
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn run_readme_line(env: &Env, line: &[String]) -> String {
    let (program, args) = line.split_first().expect("non-empty line");
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "charts/chat-operator" {
                chart_dir().to_string_lossy().into_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    match program.as_str() {
        "helm" => env
            .helm
            .run(&args)
            .unwrap_or_else(|e| panic!("README step failed: {e}")),
        "kubectl" => env
            .kubectl
            .run(&args)
            .unwrap_or_else(|e| panic!("README step failed: {e}")),
        other => panic!("README quickstart runs {other:?}; the test knows helm and kubectl only"),
    }
}

#[test]
fn chart_lifecycle_against_the_control_plane() {
    let kubeconfig = chart_tests::cluster::control_plane_kubeconfig();
    let env = Env {
        kubectl: Kubectl::new(&kubeconfig),
        helm: Helm::with_kubeconfig(&kubeconfig).expect("helm"),
        scratch: tempfile::tempdir().unwrap(),
    };
    let kubelet_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut operator = quickstart(&env, scope, &kubelet_stop);
        no_perpetual_diff(&env);
        operator.stop();
        uninstall_keeps_crds_and_chatclusters(&env);
        upgrade_from_previous_version(&env, scope, &kubelet_stop);
    });
}

/// 1 + 2: the README quickstart, and the health check on the real objects it produces.
fn quickstart<'scope, 'env>(
    env: &'env Env,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    kubelet_stop: &'scope AtomicBool,
) -> OperatorProcess {
    let lines = readme_quickstart();
    let shown: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
    assert_eq!(
        shown,
        [
            "helm install chat-operator charts/chat-operator --namespace chat-operator --create-namespace",
            "kubectl apply -f examples/basic.yaml",
            "kubectl wait --for=condition=Ready chat/demo --timeout=5m",
            "kubectl get chat",
        ],
        "the README quickstart changed: update this test so it still runs exactly the README"
    );
    // `helm install` prints NOTES.txt, which tells the user the next step.
    let install = run_readme_line(env, &lines[0]);
    assert!(
        install.contains("kubectl apply -f examples/basic.yaml"),
        "NOTES:\n{install}"
    );
    for kind in [
        "deployment",
        "serviceaccount",
        "service",
        "poddisruptionbudget",
    ] {
        assert!(
            env.kubectl.exists(&[
                kind,
                "-n",
                RELEASE_NS,
                "-l",
                "app.kubernetes.io/instance=chat-operator"
            ]),
            "{kind}"
        );
    }
    run_readme_line(env, &lines[1]);

    // The operator: outside the cluster, as system:serviceaccount:chat-operator:chat-operator.
    let mut operator = env.start_operator("quickstart", EXAMPLE_NS);
    let progressing = wait_for(READY_TIMEOUT, "the operator to write status", || {
        let chat = env.chat(EXAMPLE_NS, EXAMPLE);
        condition(&chat, "Ready").is_some().then_some(chat)
    })
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    assert!(
        operator.is_running(),
        "operator exited:\n{}",
        operator.logs()
    );
    let health = run_health_check(&health_check_path(), &progressing).expect("lua");
    assert_eq!(
        health.status, "Progressing",
        "no pod is Ready yet, so the real object must not look healthy: {health:?}\n{progressing:#}"
    );
    assert!(
        env.kubectl
            .exists(&["deployment", EXAMPLE, "-n", EXAMPLE_NS]),
        "chat-node Deployment applied"
    );

    // kstatus: `kubectl wait --for=condition=Ready` (the README's line) returns once the pods are up.
    {
        let _kubelet = play_kubelet(scope, kubelet_stop, &env.kubectl, EXAMPLE_NS, DEMO_SELECTOR);
        let mut wait = lines[2].clone();
        for arg in wait.iter_mut().filter(|a| a.starts_with("--timeout=")) {
            *arg = format!("--timeout={}s", READY_TIMEOUT.as_secs());
        }
        env.kubectl
            .run(&wait[1..])
            .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    }
    let ready = env.chat(EXAMPLE_NS, EXAMPLE);
    assert_eq!(
        ready["status"]["observedGeneration"],
        ready["metadata"]["generation"]
    );
    let listing = run_readme_line(env, &lines[3]);
    assert!(listing.contains(EXAMPLE), "kubectl get chat:\n{listing}");
    let health = run_health_check(&health_check_path(), &ready).expect("lua");
    assert_eq!(health.status, "Healthy", "{health:?}\n{ready:#}");

    // The operator owns status only: nothing it wrote is under spec.
    let with_fields = env
        .kubectl
        .json([
            "get",
            "chatcluster",
            EXAMPLE,
            "-n",
            EXAMPLE_NS,
            "--show-managed-fields",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let managed = with_fields["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    assert!(
        managed.iter().any(|e| e["manager"] == "chat-operator"),
        "the operator's field manager wrote nothing: {managed:#?}"
    );
    for entry in managed {
        if entry["manager"] == "chat-operator" {
            assert_eq!(
                entry["subresource"], "status",
                "the operator wrote outside status: {entry:#}"
            );
        }
    }
    operator
}

/// 3: apply the example again with server-side apply: nothing changes.
fn no_perpetual_diff(env: &Env) {
    let before = env.chat(EXAMPLE_NS, EXAMPLE);
    for _ in 0..2 {
        env.kubectl
            .run(["apply", "--server-side", "-f", "examples/basic.yaml"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let after = env.chat(EXAMPLE_NS, EXAMPLE);
    assert_eq!(before["spec"], after["spec"], "spec changed by a re-apply");
    // Neither the API server (no CRD defaults) nor the operator added anything to the spec.
    let written =
        parse_documents(&std::fs::read_to_string(repo_path("examples/basic.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        after["spec"],
        one_of_kind(&written, "ChatCluster")["spec"],
        "the live spec differs from the file"
    );
    assert_eq!(
        before["metadata"]["generation"],
        after["metadata"]["generation"]
    );
    // `kubectl diff` exits 0 when the live object equals what applying the file would produce.
    env.kubectl
        .run(["diff", "--server-side", "-f", "examples/basic.yaml"])
        .unwrap_or_else(|e| panic!("a perpetual diff:\n{e}"));
    env.kubectl
        .run(["diff", "-f", "examples/basic.yaml"])
        .unwrap_or_else(|e| panic!("a perpetual diff (client-side):\n{e}"));
}

/// 4: `helm uninstall` removes the operator and keeps the CRD, the ChatCluster and its chat nodes.
fn uninstall_keeps_crds_and_chatclusters(env: &Env) {
    let chat_before = env.chat(EXAMPLE_NS, EXAMPLE);
    let crd_uid_before = crd_uid(env);
    env.helm
        .run([
            "uninstall",
            RELEASE,
            "--namespace",
            RELEASE_NS,
            "--wait",
            "--timeout",
            "60s",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    for (kind, name) in [
        ("deployment", RELEASE),
        ("serviceaccount", RELEASE),
        ("service", "chat-operator-metrics"),
    ] {
        assert!(
            !env.kubectl.exists(&[kind, name, "-n", RELEASE_NS]),
            "{kind}/{name} left after uninstall"
        );
    }
    assert!(
        !env.kubectl.exists(&["clusterrole", RELEASE]),
        "ClusterRole left after uninstall"
    );
    assert_eq!(
        crd_uid(env),
        crd_uid_before,
        "the CRD was deleted or replaced by uninstall"
    );
    let chat_after = env.chat(EXAMPLE_NS, EXAMPLE);
    assert_eq!(
        chat_before["metadata"]["uid"],
        chat_after["metadata"]["uid"]
    );
    assert_eq!(chat_before["spec"], chat_after["spec"]);
    assert!(
        env.kubectl
            .exists(&["deployment", EXAMPLE, "-n", EXAMPLE_NS]),
        "chat nodes gone with the operator"
    );
}

fn crd_uid(env: &Env) -> Value {
    env.kubectl
        .json(["get", "crd", "chatclusters.realtime.dev"])
        .expect("CRD exists")["metadata"]["uid"]
        .clone()
}

fn printer_columns(env: &Env) -> Vec<String> {
    let crd = env
        .kubectl
        .json(["get", "crd", "chatclusters.realtime.dev"])
        .expect("CRD");
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The chat-node image the previous chart's operator defaults to (its appVersion's).
const PREVIOUS_VERSION: &str = "0.0.1";
/// The CRD change of this version that the previous chart's CRD lacks: the `Image` printer
/// column and `spec.imagePolicy`.
const NEW_COLUMN: &str = "Image";

/// The "previous release" of the chart, constructed (none was published yet) as the release
/// before this one looked: the current chart with version and appVersion 0.0.1 (so its operator
/// defaults to `chat-node:0.0.1`, through the same `chatNode.image` value), and the CRD without
/// this version's user-facing additions, packaged with `helm package` as a release would be.
/// (`status.nodeImage` stays: the operator binary that plays the previous one writes it, and
/// server-side apply refuses a field the schema does not declare. The status of a previous
/// operator that did not record it is made below by removing it.)
fn previous_chart(env: &Env) -> PathBuf {
    let dir = env.scratch.path().join("previous/chat-operator");
    copy_dir(&chart_dir(), &dir);
    let chart_yaml = std::fs::read_to_string(dir.join("Chart.yaml")).unwrap();
    let chart_yaml = chart_yaml
        .lines()
        .map(|l| match l {
            l if l.starts_with("version:") => format!("version: {PREVIOUS_VERSION}"),
            l if l.starts_with("appVersion:") => format!("appVersion: \"{PREVIOUS_VERSION}\""),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("Chart.yaml"), chart_yaml).unwrap();
    let spec_path = dir.join("files/crds/chatclusters.realtime.dev.spec.yaml");
    let mut spec: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let version = &mut spec["spec"]["versions"][0];
    let columns = version["additionalPrinterColumns"]
        .as_array_mut()
        .expect("the CRD has printer columns");
    let before = columns.len();
    columns.retain(|c| c["name"] != NEW_COLUMN);
    assert_eq!(
        columns.len() + 1,
        before,
        "the CRD has an {NEW_COLUMN} column"
    );
    let removed = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .as_object_mut()
        .expect("spec properties")
        .remove("imagePolicy");
    assert!(removed.is_some(), "the CRD has spec.imagePolicy");
    std::fs::write(&spec_path, serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
    let out = env.scratch.path().join("packages");
    env.helm
        .run([
            OsArg::s("package"),
            OsArg::p(&dir),
            OsArg::s("--destination"),
            OsArg::p(&out),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    out.join(format!("chat-operator-{PREVIOUS_VERSION}.tgz"))
}

fn node_image(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("a chat-node image")
        .to_string()
}

fn operator_env(env: &Env, name: &str) -> String {
    let deployment = env
        .kubectl
        .json(["get", "deployment", RELEASE, "-n", RELEASE_NS])
        .unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("the chart sets no {name}"))
        .to_string()
}

/// 5: a ChatCluster made under the previous version, then `helm upgrade` to this one.
fn upgrade_from_previous_version<'scope, 'env>(
    env: &'env Env,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    kubelet_stop: &'scope AtomicBool,
) {
    let package = previous_chart(env);
    let crd_uid_before = crd_uid(env);
    env.helm
        .run([
            OsArg::s("install"),
            OsArg::s(RELEASE),
            OsArg::p(&package),
            OsArg::s("--namespace"),
            OsArg::s(RELEASE_NS),
        ])
        .unwrap_or_else(|e| panic!("installing the previous chart over the kept CRD: {e}"));
    assert!(
        !printer_columns(env).contains(&NEW_COLUMN.to_string()),
        "the previous chart's CRD was not applied"
    );
    let previous_image = format!("ghcr.io/chatcluster/chat-node:{PREVIOUS_VERSION}");
    assert_eq!(
        operator_env(env, "CHAT_OPERATOR_DEFAULT_NODE_IMAGE"),
        previous_image
    );

    // A user's ChatCluster without spec.image, reconciled by the previous operator.
    let users = TempNamespace::create(&env.kubectl, "upgrade").expect("namespace");
    let ns = users.name();
    env.kubectl
        .run(["apply", "-n", ns, "-f", "examples/basic.yaml"])
        .unwrap_or_else(|e| panic!("{e}"));
    {
        let operator = env.start_operator("previous", ns);
        let _kubelet = play_kubelet(scope, kubelet_stop, &env.kubectl, ns, DEMO_SELECTOR);
        wait_for(READY_TIMEOUT, "demo Ready under the previous chart", || {
            is_true(&env.chat(ns, EXAMPLE), "Ready").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    }
    let nodes_before = env
        .kubectl
        .json(["get", "deployment", EXAMPLE, "-n", ns])
        .unwrap();
    assert_eq!(node_image(&nodes_before), previous_image);
    // The status as an operator that did not record the image (0.1.0) leaves it.
    env.kubectl
        .run([
            "patch",
            "chat",
            EXAMPLE,
            "-n",
            ns,
            "--subresource=status",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/status/nodeImage"}]"#,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let chat_before = env.chat(ns, EXAMPLE);
    assert!(chat_before["status"]["nodeImage"].is_null());

    let upgrade = env
        .helm
        .run([
            OsArg::s("upgrade"),
            OsArg::s(RELEASE),
            OsArg::p(&chart_dir()),
            OsArg::s("--namespace"),
            OsArg::s(RELEASE_NS),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(upgrade.contains("has been upgraded"), "{upgrade}");
    assert_eq!(
        crd_uid(env),
        crd_uid_before,
        "the CRD was replaced, not updated in place"
    );
    assert!(
        printer_columns(env).contains(&NEW_COLUMN.to_string()),
        "helm upgrade did not update the CRD"
    );
    let version = env!("CARGO_PKG_VERSION");
    let deployment = env
        .kubectl
        .json(["get", "deployment", RELEASE, "-n", RELEASE_NS])
        .unwrap();
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.ends_with(&format!(":{version}")),
        "operator image not upgraded: {image}"
    );
    let new_image = format!("ghcr.io/chatcluster/chat-node:{version}");
    assert_eq!(
        operator_env(env, "CHAT_OPERATOR_DEFAULT_NODE_IMAGE"),
        new_image
    );
    assert_ne!(new_image, previous_image, "the two versions must differ");

    // The upgraded operator takes over. It records the image the nodes run (read from their
    // Deployment, as the status has none), shown by the printer column only the new CRD has,
    // and it demonstrably reconciles: it recreates a deleted child. The chat nodes are not
    // touched.
    let operator = env.start_operator("upgraded", ns);
    let _kubelet = play_kubelet(scope, kubelet_stop, &env.kubectl, ns, DEMO_SELECTOR);
    wait_for(
        READY_TIMEOUT,
        "the upgraded operator to record status.nodeImage",
        || (env.chat(ns, EXAMPLE)["status"]["nodeImage"] == previous_image.as_str()).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    let wide = env
        .kubectl
        .run(["get", "chat", EXAMPLE, "-n", ns, "-o", "wide"])
        .unwrap();
    assert!(
        wide.contains("IMAGE") && wide.contains(&previous_image),
        "kubectl get chat -o wide:\n{wide}"
    );
    let admin_service = format!("{EXAMPLE}-admin");
    env.kubectl
        .run(["delete", "service", &admin_service, "-n", ns])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        READY_TIMEOUT,
        "the upgraded operator to recreate the admin Service",
        || {
            env.kubectl
                .exists(&["service", &admin_service, "-n", ns])
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    let chat_after = env.chat(ns, EXAMPLE);
    assert_eq!(
        chat_before["metadata"]["uid"], chat_after["metadata"]["uid"],
        "ChatCluster replaced"
    );
    assert_eq!(
        chat_before["spec"], chat_after["spec"],
        "ChatCluster spec changed by the upgrade"
    );
    let nodes_after = env
        .kubectl
        .json(["get", "deployment", EXAMPLE, "-n", ns])
        .unwrap();
    assert_eq!(
        serde_json::to_string(&nodes_before["spec"]["template"]).unwrap(),
        serde_json::to_string(&nodes_after["spec"]["template"]).unwrap(),
        "the chat-node pod template changed: the upgrade would restart users' chat nodes"
    );
    assert_eq!(
        nodes_before["metadata"]["generation"], nodes_after["metadata"]["generation"],
        "the chat-node Deployment was rewritten"
    );

    // The documented opt-in (docs/helm.md): follow the operator's default -> one rollout to it.
    env.kubectl
        .run([
            "patch",
            "chat",
            EXAMPLE,
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"imagePolicy":"followOperator"}}"#,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        env.chat(ns, EXAMPLE)["spec"]["imagePolicy"],
        "followOperator",
        "the new CRD serves spec.imagePolicy"
    );
    wait_for(READY_TIMEOUT, "the nodes to roll to the new image", || {
        let nodes = env
            .kubectl
            .json(["get", "deployment", EXAMPLE, "-n", ns])
            .ok()?;
        let chat = env.chat(ns, EXAMPLE);
        (node_image(&nodes) == new_image
            && chat["status"]["nodeImage"] == new_image.as_str()
            && chat["status"]["observedGeneration"] == chat["metadata"]["generation"]
            && is_true(&chat, "Ready")
            && !is_true(&chat, "Progressing"))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    drop(operator);
    let _ = env
        .helm
        .run(["uninstall", RELEASE, "--namespace", RELEASE_NS]);
}

/// A command-line argument that is either a string or a path.
enum OsArg<'a> {
    S(&'a str),
    P(&'a Path),
}

impl OsArg<'_> {
    fn s(s: &str) -> OsArg<'_> {
        OsArg::S(s)
    }
    fn p(p: &Path) -> OsArg<'_> {
        OsArg::P(p)
    }
}

impl AsRef<std::ffi::OsStr> for OsArg<'_> {
    fn as_ref(&self) -> &std::ffi::OsStr {
        match self {
            OsArg::S(s) => s.as_ref(),
            OsArg::P(p) => p.as_os_str(),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
